#!/usr/bin/env bash
# The H200 check (DESIGN.md §9), run in the repository root on the device machine, which has
# torch, transformers and triton but no LMDeploy and no network. Prepare the wheels first on a
# machine with PyPI: scripts/gpu_check/prepare_wheels.sh (carry .local/gpu-wheels to the device).
# GPU_CHECK_SIZE=small|2b|8b (default 2b: InternVL3-2B's shapes, 3.6 GB of weights; 8b's 16 GB
# do not fit the time). Stops itself at 470 s to stay under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${GPU_WHEELS:-.local/gpu-wheels}
[ -d "$WHEELS" ] || { echo "no $WHEELS: run scripts/gpu_check/prepare_wheels.sh first" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# --no-deps: pip skips what the machine already has and never replaces its torch or transformers.
python -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" \
  -r scripts/gpu_check/requirements.txt "$WHEELS"/lmdeploy-*.whl
python -c "import lmdeploy, torch, transformers; print('lmdeploy', lmdeploy.__version__, \
'torch', torch.__version__, 'transformers', transformers.__version__)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout --signal=INT 470 python scripts/gpu_check/check.py --size "${GPU_CHECK_SIZE:-2b}" "$@"
