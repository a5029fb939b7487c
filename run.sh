#!/usr/bin/env bash
# Set everything up (idempotent) and start the app on the built-in demo data set.
# LABELLOOP_PORT picks the port (default 8501); other arguments go to `streamlit run`
# (for example --server.address 0.0.0.0; see README "Serving to a network").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash scripts/setup.sh
.venv/bin/labelloop demo --if-missing
echo
exec .venv/bin/labelloop app --port "${LABELLOOP_PORT:-8501}" "$@"
