#!/usr/bin/env bash
# Installs ppc into .venv and runs ruff and the test suite (benchmarks stay disabled; see tests/bench).
#   scripts/test.sh            every test: what CI runs (.ci/run)
#   scripts/test.sh --quick    the tests not marked slow (no ranks, no training, no profile run),
#                              on two pytest workers (pytest-xdist); skips the install when .venv
#                              already imports ppc, pytest and xdist
# Further arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
if [ "$quick" = 0 ] || ! .venv/bin/python -c "import ppc, pytest, xdist" 2>/dev/null; then
  scripts/install.sh
fi
.venv/bin/python -m ruff check ppc sim exec tests
if [ "$quick" = 1 ]; then
  .venv/bin/python -m pytest tests -m "not slow" -n 2 "$@"
else
  .venv/bin/python -m pytest tests "$@"
fi
