#!/usr/bin/env bash
# The engine packages of the CPU test environment (DESIGN.md §4, §10), into the venv whose pip is
# $PIP: LMDeploy 0.18 without its TurboMind binaries (there is no CPU backend, but its configs,
# chat templates, InternVL preprocessing, sessions and error handling all run here and are tested
# on the real package) and torchvision's Python side (PyPI's torchvision is a CUDA build whose
# C++ ops cannot load beside the CPU torch; transformers' InternVL processors and LMDeploy's
# InternVL preprocessing need only its transforms). Everything installs with --no-deps, so pip
# never swaps the CPU torch for a CUDA one.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=${PIP:-.venv/bin/pip}
PYTHON=${PYTHON:-.venv/bin/python}
WHEELS=.local/engine-wheels
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
"$PIP" download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" \
  "lmdeploy==0.18.0" "torchvision==0.28.0"
"$PYTHON" -m scripts.engine_wheels.surgery strip-turbomind "$WHEELS"/lmdeploy-*.whl
"$PYTHON" -m scripts.engine_wheels.surgery torchvision-without-ops "$WHEELS"/torchvision-*.whl
"$PIP" install --quiet --no-deps "$WHEELS"/lmdeploy-*.whl "$WHEELS"/torchvision-*.whl \
  -r scripts/engine_wheels/lmdeploy-requirements.txt
