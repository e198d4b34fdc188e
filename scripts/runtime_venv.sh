#!/usr/bin/env bash
# The runtime-only install, measured: a fresh venv with a plain `pip install` of this checkout (no extras), its size,
# that it holds no torch, and `edgedistill predict` of an exported bundle on a photo inside it.
#
#   scripts/runtime_venv.sh BUNDLE PHOTO [VENV]      e.g. scripts/runtime_venv.sh runs/demo/exports/student cat.jpg
#
# Prints the size (du -sh), the installed packages, the prediction and a bench of the bundle; exits non-zero if
# torch got in or predict or bench fails.
set -euo pipefail
bundle=${1:?usage: scripts/runtime_venv.sh BUNDLE PHOTO [VENV]}
photo=${2:?usage: scripts/runtime_venv.sh BUNDLE PHOTO [VENV]}
venv=${3:-/tmp/edgedistill-runtime-venv}
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$venv"
${PYTHON:-python3} -m venv "$venv"
"$venv/bin/pip" install -q --no-compile "$repo" 2> >(grep -v '^WARNING: Location' >&2)
echo "== size of the fresh venv"
du -sh "$venv"
echo "== packages"
"$venv/bin/pip" list --format=freeze 2>/dev/null | tr '\n' ' '; echo
if "$venv/bin/python" -c "import importlib.util, sys; sys.exit(0 if any(importlib.util.find_spec(m) for m in ('torch', 'timm', 'open_clip', 'lightning')) else 1)"; then
  echo "FAIL: the runtime-only venv holds part of the training stack" >&2; exit 1
fi
echo "== no torch, timm, open_clip or lightning"
echo "== edgedistill predict $bundle $photo"
(cd /tmp && EDGEDISTILL_NO_PROGRESS=1 "$venv/bin/edgedistill" predict "$bundle" "$photo" --top_k 3)
echo "== a training command there"
(cd /tmp && "$venv/bin/edgedistill" train --help) || echo "exit status $?"
echo "== edgedistill bench of the bundle there (every runtime it has; the rest skipped with the reason)"
(cd /tmp && EDGEDISTILL_NO_PROGRESS=1 "$venv/bin/edgedistill" bench --student "$bundle" --out "$venv/bench" \
  --batch_sizes '[1, 8]' --iters 20 --warmup 3 | grep -E '^- ')  # the race's verdict and what was not run
