"""The local LLM runtime is built for a portable CPU baseline, not for the build machine (scripts/bootstrap.sh).

A llama.cpp built with -march=native carries the build machine's AVX-512/AMX kernels: it crashed in
llama_decode on one such machine, and pip's wheel cache could carry it to a CPU without them. The library
reports the instruction sets it was compiled for; none beyond x86-64-v3 may appear.
"""

from __future__ import annotations

import platform

BEYOND_BASELINE = ("AVX512", "AMX", "AVX_VNNI")


def test_llama_cpp_is_built_for_the_portable_baseline() -> None:
    from llama_cpp import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    parts = [p.strip() for p in info.replace("|", "\n").splitlines()]
    enabled = {p.split("=")[0].strip() for p in parts if p.endswith("= 1")}
    assert platform.machine() in ("x86_64", "AMD64")
    assert not {f for f in enabled if f.startswith(BEYOND_BASELINE)}, f"llama.cpp was built beyond the baseline: {info}"
    assert "CPU" in info, info
