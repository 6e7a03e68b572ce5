#!/usr/bin/env bash
# Creates .venv (if missing) and installs ppc with everything it needs.
# CPU machines get torch==2.13.0 (a CPU build); a machine with an NVIDIA GPU keeps
# whatever torch it has or gets the default build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -q "torch>=2.6"
  else
    $PIP install -q torch==2.13.0
  fi
fi
$PIP install -q -e ".[train,test,search]"
