#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite.
# Extra arguments go to pytest, e.g. ./test.sh -k tables -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
