#!/usr/bin/env bash
# Installs ppc into .venv and runs the test suite (benchmarks stay disabled; see tests/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/python -m ruff check ppc sim exec tests
.venv/bin/python -m pytest tests "$@"
