#!/usr/bin/env bash
# Build the separate virtualenv that bench/streaming.py runs WhisperLive 0.10.0 from.
#
# Order matters (shared/DESIGN.md): torch==2.13.0 first, because on these machines that pin resolves
# to a local CPU build, while anything pulling torch unpinned drags in a multi-GB CUDA build; then
# whisper-live with --no-deps (its requirements pin torch and friends); then the few packages its
# faster-whisper backend and server actually import.
#
# Usage: bench/setup_whisperlive.sh [VENV_DIR]   (default: $WL_VENV or /tmp/wl-venv, outside the repo)
set -euo pipefail

VENV="${1:-${WL_VENV:-/tmp/wl-venv}}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import whisper_live.server, faster_whisper" 2>/dev/null; then
    echo "WhisperLive already installed in $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q --no-deps "whisper-live==0.10.0"
"$VENV/bin/python" -m pip install -q "faster-whisper==1.2.0" "tokenizers==0.20.3" \
    fastapi uvicorn python-multipart websockets
"$VENV/bin/python" -c "import whisper_live.server, faster_whisper; print('WhisperLive ready in $VENV')"
