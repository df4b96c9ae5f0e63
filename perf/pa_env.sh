# Sourced by the perf_analyzer scripts, from the repository root with PY set. perf_analyzer (shipped in the
# tritonclient wheel) needs libb64 and libcudart: link the copies the server wheel already carries, so no
# CUDA install is needed. Sets LIBS (the folder perf_analyzer needs on LD_LIBRARY_PATH) and PA, and stops
# the script if perf_analyzer cannot start.
SP=$($PY -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
LIBS=$PWD/.cache/palibs
mkdir -p "$LIBS"
ln -sfn "$(ls "$SP"/nvidia_pytriton.libs/libb64-*.so.0d | head -n1)" "$LIBS/libb64.so.0d"
ln -sfn "$(ls "$SP"/nvidia_pytriton.libs/libcudart-*.so.12* | head -n1)" "$LIBS/libcudart.so.12"
PA=.venv/bin/perf_analyzer
LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} $PA --version >/dev/null 2>&1 \
  || { echo "perf_analyzer cannot start: $(LD_LIBRARY_PATH=$LIBS $PA --version 2>&1 | tail -1)"; exit 1; }
