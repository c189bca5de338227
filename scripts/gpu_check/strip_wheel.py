"""Rewrite an LMDeploy wheel without its TurboMind binaries (CUDA 12 builds the H200 lacks)."""

import sys
import zipfile
from pathlib import Path

STRIPPED = ("lmdeploy/turbomind/_turbomind", "lmdeploy/turbomind/lib64/", "lmdeploy/lib/")


def strip_wheel(wheel: Path) -> None:
    """Replace `wheel` by a copy without the TurboMind binaries, its RECORD updated to match."""
    scratch = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(scratch, "w",
                                                           zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if item.filename.startswith(STRIPPED):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines
                               if not line.startswith(STRIPPED)).encode()
            target.writestr(item, data)
    scratch.replace(wheel)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        before = Path(path).stat().st_size
        strip_wheel(Path(path))
        print(f"{path}: {before / 2**20:.0f} MiB -> {Path(path).stat().st_size / 2**20:.1f} MiB")
