#!/usr/bin/env bash
# Download the wheels the GPU machine's image lacks (it has torch, triton, transformers,
# accelerate, einops, imageio, opencv, pyyaml, pytest; no network) into wheels/ (or $1), for
# its Python 3.12 on x86-64. Carry the folder there and run `WHEELS=wheels scripts/gpu_check.sh`.
# Pure-Python wheels except wcwidth's (an abi3 manylinux build), hence the platform tags.
set -euo pipefail
DEST=${1:-wheels}
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" diffusers==0.42.1 omegaconf antlr4-python3-runtime ftfy wcwidth importlib_metadata
ls -l "$DEST"
