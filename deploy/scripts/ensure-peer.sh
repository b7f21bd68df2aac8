#!/usr/bin/env bash
# Make the peer OpenAI-compatible server (faster-whisper-server 0.0.3 from PyPI) available to the
# tests in its own venv (.venv-peer): its dependency pins are not ours, so it never shares .venv.
# Idempotent and fast: a stamp file records what was installed; nothing runs when it matches.
# The tests start it on 127.0.0.1 with the local tiny.en directory (tests/peers.py); it never
# reaches a model hub.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PY:-python3}
PEER_VENV=${PEER_VENV:-.venv-peer}
# The same faster-whisper and CTranslate2 as the guard's venv, so the peer decodes with the same
# engine (the parity test compares transcripts); fall back to the guard's own pins.
ct2=""
if [ -x .venv/bin/python ]; then
  ct2=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("ctranslate2"))' 2>/dev/null || true)
fi
spec="faster-whisper-server==0.0.3 faster-whisper==1.2.1${ct2:+ ctranslate2==$ct2}"
stamp="$PEER_VENV/.whisper-guard-peer"

if [ -x "$PEER_VENV/bin/faster-whisper-server" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$spec" ]; then
  exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "$PY" -m venv "$PEER_VENV" \
       && "$PEER_VENV/bin/pip" install -q --disable-pip-version-check $spec; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "ensure-peer: installing $spec into $PEER_VENV failed" >&2
  exit 1
fi
printf '%s' "$spec" >"$stamp"
echo "ensure-peer: $PEER_VENV has $spec"
