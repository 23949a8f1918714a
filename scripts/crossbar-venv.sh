#!/usr/bin/env bash
# Installs the Crossbar.io router into its own virtualenv (default .venv-crossbar).
# Crossbar pins an older websockets (through web3) than pictl needs, so the two can never share a
# virtualenv. Takes about two minutes and 350 MB; run once (make crossbar, .ci/run). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${CROSSBAR_VENV:-.venv-crossbar}"
VERSION="${CROSSBAR_VERSION:-26.10.1}"
if [ -x "$VENV/bin/crossbar" ] && "$VENV/bin/python" -c "import crossbar, sys; sys.exit(crossbar.__version__ != '$VERSION')" 2>/dev/null; then
    echo "crossbar $VERSION already in $VENV"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "crossbar==$VERSION"
"$VENV/bin/crossbar" version >/dev/null
echo "crossbar $VERSION installed in $VENV"
