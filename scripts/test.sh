#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine (Debian + Python 3.11), then run it.
# Safe to re-run: installs are no-ops when already present. GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
PY="${PYTHON:-python3}"
step() { printf '\n==> %s\n' "$*"; }

step "system packages: ffmpeg (decoding), codec2-examples (Harvard speech), chromium (web page tests), flite"
if ! command -v ffmpeg >/dev/null || ! command -v chromium >/dev/null || [ ! -f /usr/share/codec2/raw/speech_orig_16k.wav ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg codec2-examples chromium flite >/dev/null
fi

step "python packages (CPU torch first: an unpinned torch would pull multi-GB CUDA wheels)"
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check -e ".[test,bench]" "torch==2.13.0"
# The suite scores WER with openai-whisper's English text normaliser (Whisper's standard scoring; the server
# itself never imports openai-whisper). Without its dependencies: they include triton (~1 GB, CUDA only).
"$PY" -m pip install -q --disable-pip-version-check --no-deps openai-whisper
"$PY" -m pip install -q --disable-pip-version-check numba tiktoken more-itertools tqdm regex
# diarization: NeMo Sortformer ([sortformer]); the CPU embedding diarizer ships its weights and needs nothing more
"$PY" -m pip install -q --disable-pip-version-check -e ".[sortformer]" "torch==2.13.0"

step "tests (two workers, a test file each at a time: most tests wait on real-time audio, not on the CPU)"
exec "$PY" -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 "$@"
