#!/usr/bin/env bash
# The vLLM checks for the first machine with an NVIDIA GPU (none ran on the CPU-only development boxes).
#
#   bash scripts/gpu_check_vllm.sh [VENV_DIR] [MODEL]     # default /work/vllm-gpu-venv, the qwen2.5 pack; ~15 min
#
# 1. a venv with medtune and vLLM's CUDA build (`pip install 'medtune[vllm]'`);
# 2. greedy parity and throughput of `--backend vllm` against the transformers backend on MODEL
#    (bench/vllm_parity.py: >= 18 of 20 zh/ko/en prompts must be equal; exit 1 otherwise);
# 3. gateway mode in front of a real `vllm serve` (tests/test_gateway.py::test_in_front_of_vllm_serve).
# Results go to docs/benchmarks.md by hand, with the GPU's name (nvidia-smi -L).
set -euo pipefail
VENV=${1:-/work/vllm-gpu-venv}
MODEL=${2:-qwen2.5-coder-0.5b-instruct}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/medtune-gpu-check}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e "$ROOT[vllm,serve,test]"
export PYTHONPATH="$ROOT"
cd "$ROOT"
"$VENV/bin/python" bench/vllm_parity.py --backend transformers --model "$MODEL" --out "$OUT/transformers.json"
"$VENV/bin/python" bench/vllm_parity.py --backend vllm --model "$MODEL" --out "$OUT/vllm.json"
"$VENV/bin/python" bench/vllm_parity.py --compare "$OUT/transformers.json" "$OUT/vllm.json" | tee "$OUT/parity.txt"
MEDTUNE_VLLM_PYTHON="$VENV/bin/python" "$VENV/bin/python" -m pytest -q tests/test_gateway.py -k vllm | tee "$OUT/gateway.txt"
echo "results in $OUT"
