"""Rewrite engine wheels for machines they were not built for (the CPU test venv, the H200 check).

- `strip-turbomind`: LMDeploy without its TurboMind binaries, which link CUDA 12 libraries (the
  PyTorch engine and every pure-Python part of LMDeploy still import and run).
- `torchvision-without-ops`: PyPI's torchvision is a CUDA build whose C++ ops cannot load beside a
  CPU torch; its Python transforms work without them, but the import dies registering fake
  kernels for the missing `nms`/`qnms` ops. This applies the guard upstream proposes
  (pytorch/vision PR #9649): register them only when the ops loaded.
"""

import argparse
import base64
import hashlib
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

TURBOMIND_BINARIES = ("lmdeploy/turbomind/_turbomind", "lmdeploy/turbomind/lib64/",
                      "lmdeploy/lib/")
TORCHVISION_META = "torchvision/_meta_registrations.py"
_UNGUARDED_FAKE = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$',
                             re.MULTILINE)
_GUARDED_FAKE = (r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() "
                 r"else (lambda fn: fn))")

# Receives a member's name and bytes; returns the new bytes, or None to leave the member out.
Rewrite = Callable[[str, bytes], bytes | None]


def rewrite_wheel(wheel: Path, rewrite: Rewrite) -> None:
    """Replace `wheel` by a copy with members rewritten or dropped, its RECORD kept in step."""
    scratch = wheel.with_suffix(".tmp")
    dropped: set[str] = set()
    changed: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(scratch, "w",
                                                           zipfile.ZIP_DEFLATED) as target:
        records = []
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                records.append((item, data))
                continue
            new = rewrite(item.filename, data)
            if new is None:
                dropped.add(item.filename)
                continue
            if new != data:
                changed[item.filename] = new
            target.writestr(item, new)
        for item, data in records:
            lines = []
            for line in data.decode().splitlines(keepends=True):
                name = line.split(",", 1)[0]
                if name in dropped:
                    continue
                lines.append(_record_line(name, changed[name]) if name in changed else line)
            target.writestr(item, "".join(lines).encode())
    scratch.replace(wheel)


def _record_line(name: str, data: bytes) -> str:
    """A RECORD line as the wheel spec writes it: urlsafe base64 SHA-256 without padding."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def strip_turbomind(name: str, data: bytes) -> bytes | None:
    """Leave out TurboMind's CUDA binaries, keep everything else."""
    return None if name.startswith(TURBOMIND_BINARIES) else data


def guard_torchvision_ops(name: str, data: bytes) -> bytes | None:
    """Register torchvision's fake nms/qnms kernels only when its C++ ops loaded."""
    if name != TORCHVISION_META:
        return data
    text, count = _UNGUARDED_FAKE.subn(_GUARDED_FAKE, data.decode())
    if count == 0 and "_has_ops() else (lambda fn: fn)" not in text:
        raise ValueError(f"{name}: no unguarded register_fake found; has torchvision changed?")
    return text.encode()


REWRITES: dict[str, Rewrite] = {
    "strip-turbomind": strip_turbomind,
    "torchvision-without-ops": guard_torchvision_ops,
}


def main() -> None:
    """Command line: apply one rewrite to each wheel given."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rewrite", choices=sorted(REWRITES))
    parser.add_argument("wheels", nargs="+", type=Path)
    args = parser.parse_args()
    for wheel in args.wheels:
        before = wheel.stat().st_size
        rewrite_wheel(wheel, REWRITES[args.rewrite])
        print(f"{wheel}: {args.rewrite}, {before / 2**20:.1f} MiB -> "
              f"{wheel.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
