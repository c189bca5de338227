#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels the H200 check machine lacks (DESIGN.md §9): LMDeploy
# with its TurboMind binary removed (that binary links CUDA 12 and is 107 MB; the PyTorch engine
# runs on the machine's own torch) and the small pure-Python packages LMDeploy and our worker
# import. They land in .local/gpu-wheels/ (git-ignored), which the device run carries.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-.local/gpu-wheels}
PY=${GPU_PYTHON_VERSION:-312}
rm -rf "$OUT" && mkdir -p "$OUT"
pip_download() {
  python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any -d "$OUT" "$@"
}
pip_download "lmdeploy==0.18.*"
python -m scripts.engine_wheels.surgery strip-turbomind "$OUT"/lmdeploy-*.whl
# What LMDeploy's PyTorch engine, its vision preprocessing and api_server import, and what our
# worker imports, minus what the machine has (torch, triton, transformers and its dependencies).
pip_download -r scripts/gpu_check/requirements.txt
du -sh "$OUT"
ls "$OUT"
