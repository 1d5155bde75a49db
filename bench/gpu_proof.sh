#!/usr/bin/env bash
# GPU proof of medtune's training paths in one command: LoRA and QLoRA steps of an 8B-shape random model
# (packing, varlen attention, Liger and the fused loss each on and off: tokens/s, peak GPU memory, MFU),
# 2 DPO and 2 GRPO steps, merge parity on a small model; writes one JSON and a docs-ready table.
# Planned for one air-gapped H100 in <= 8 minutes (bench/gpu_proof.py --budget-s 450 skips what would
# start later). Not yet run on a GPU: see docs/benchmarks.md.
#
#   bash bench/gpu_proof.sh                  # on the GPU machine (no network needed)
#   bash bench/gpu_proof.sh --cpu            # dry run on tiny shapes (CI slow tier; ~2 min on 2 cores)
#   bash bench/gpu_proof.sh --fetch-wheels   # on a connected machine: wheels that travel -> bench/wheels/ (61 MiB)
#
# The target needs torch, transformers, peft, accelerate and triton. What else medtune's training path
# imports comes from bench/wheels/ (pip --no-index, only the missing ones, into .proof-deps/). What does not
# travel: vLLM and flash-attn (hundreds of MiB; the proof uses PyTorch's own varlen kernel), bitsandbytes when
# the rest already fills the 64 MiB (then the QLoRA arm is reported as skipped). Env: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=bench/wheels
if [ "${1:-}" = "--fetch-wheels" ]; then  # add "qlora" for bitsandbytes (only for a target that has pyarrow and pandas)
  "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" -r bench/gpu_proof_wheels.txt
  if [ "${2:-}" = "qlora" ]; then "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "bitsandbytes==0.50.2"; fi
  du -sh "$WHEELS"
  exit 0
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# module:wheel pairs; a module that imports is left alone
missing=$("$PY" - <<'PY'
import importlib.util
pairs = ["trl:trl", "datasets:datasets", "pyarrow:pyarrow", "pandas:pandas", "dateutil:python-dateutil", "six:six", "pytz:pytz",
         "dill:dill", "multiprocess:multiprocess", "xxhash:xxhash", "fsspec:fsspec", "pydantic:pydantic",
         "pydantic_core:pydantic-core", "annotated_types:annotated-types", "typing_inspection:typing-inspection",
         "rich:rich", "pygments:pygments", "markdown_it:markdown-it-py", "mdurl:mdurl",
         "charset_normalizer:charset-normalizer", "liger_kernel:liger-kernel", "bitsandbytes:bitsandbytes"]
print(" ".join(w for m, w in (p.split(":") for p in pairs) if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -d "$WHEELS" ]; then
    echo "installing from $WHEELS: $missing" >&2
    for w in $missing; do  # one by one: a wheel that did not travel (bitsandbytes) is reported, not fatal
      "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target .proof-deps "$w" \
        || echo "not available offline: $w" >&2
    done
  else
    echo "missing and no $WHEELS/ (run --fetch-wheels on a connected machine): $missing" >&2
  fi
fi
export PYTHONPATH="$PWD/.proof-deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_proof.py "$@"
