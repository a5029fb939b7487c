#!/usr/bin/env bash
# Set everything up (idempotent) and start the app on the built-in demo data set.
# LABELLOOP_PORT picks the port (default 8501); other arguments go to `streamlit run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash scripts/setup.sh
.venv/bin/python -m core demo --if-missing
echo
echo "Starting the app: open http://127.0.0.1:${LABELLOOP_PORT:-8501} in your browser (Ctrl+C stops it)."
exec .venv/bin/python -m streamlit run app.py --server.port "${LABELLOOP_PORT:-8501}" "$@"
