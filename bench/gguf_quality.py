"""How far a quantized GGUF is from its f16 file: mean KL divergence, top-1 agreement and perplexity.

    PYTHONPATH=. python bench/gguf_quality.py F16.gguf Q4_K_M.gguf [more.gguf ...]
    PYTHONPATH=. python bench/gguf_quality.py F16.gguf --variant 'iq4nl=attn_(q|k|output)\\.weight:iq4_nl,ffn_(gate|up)\\.weight:iq4_nl'

llama.cpp's own measure of quantization damage (``llama-perplexity --kl-divergence``): every file is fed
the same token chunks (teacher forcing, 256 tokens each) of the example guidelines and the medical QA
answers in ``examples/`` (zh / ko / en), and each position's next-token distribution is compared with
the f16 file's: mean KL(f16 || quant) in nats, the share of positions whose top-1 token is the f16
file's, and each file's perplexity on the text. ``--variant NAME=PATTERN:TYPE,...`` first quantizes
the f16 file to q4_k_m with llama.cpp's per-tensor type overrides (``llama-quantize --tensor-type``),
e.g. to try another type for the tensors whose rows do not fit a k-quant block.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np


def texts() -> list[str]:
    out = [Path(p).read_text(encoding="utf-8") for p in sorted(glob.glob("examples/sources/guidelines/*"))]
    for line in Path("examples/medical_qa.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        out.append(r.get("instruction", "") + "\n" + r.get("output", ""))
    return out


def quantize_variant(f16: Path, name: str, spec: str) -> Path:
    """q4_k_m of ``f16`` with ``PATTERN:TYPE,...`` overrides (regex on tensor names, a ggml type name)."""
    from medtune.llamacpp import quantize

    overrides = dict(item.rsplit(":", 1) for item in spec.split(","))
    return quantize(f16, f16.with_name(f"{f16.stem}-{name}.gguf"), "q4_k_m", tensor_types=overrides)


def log_probs(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    x = np.array(llm.scores[:len(tokens)], dtype=np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("f16", type=Path)
    ap.add_argument("quants", type=Path, nargs="*")
    ap.add_argument("--variant", action="append", default=[], help="NAME=PATTERN:TYPE,... (q4_k_m with overrides)")
    ap.add_argument("--chunks", type=int, default=40)
    args = ap.parse_args()
    from medtune.llamacpp import load_gguf

    quants = list(args.quants) + [quantize_variant(args.f16, *v.split("=", 1)) for v in args.variant]
    ref = load_gguf(args.f16, n_ctx=512, logits_all=True)
    models = {q: load_gguf(q, n_ctx=512, logits_all=True) for q in quants}
    chunks = []
    for t in texts():
        toks = ref.tokenize(t.encode("utf-8"), add_bos=False)
        chunks += [toks[i:i + 256] for i in range(0, len(toks) - 16, 256)]
    chunks = chunks[:args.chunks]
    sums = {q: np.zeros(4) for q in [args.f16, *quants]}   # KL, top-1 equal, NLL, positions
    for toks in chunks:
        lr = log_probs(ref, toks)[:-1]
        target = np.array(toks[1:])
        for q, llm in [(args.f16, None), *models.items()]:
            lq = lr if llm is None else log_probs(llm, toks)[:-1]
            kl = (np.exp(lr) * (lr - lq)).sum(-1)
            sums[q] += [kl.sum(), (lq.argmax(-1) == lr.argmax(-1)).sum(), -lq[np.arange(len(target)), target].sum(), len(target)]
    print(f"{len(chunks)} chunks, {int(sums[args.f16][3])} positions")
    print("| file | size MB | mean KL (nats) | top-1 = f16 | perplexity |\n|---|---|---|---|---|")
    for q, (kl, top, nll, n) in sums.items():
        print(f"| {q.name} | {q.stat().st_size / 1e6:.0f} | {kl / n:.4f} | {top / n:.4f} | {np.exp(nll / n):.2f} |")


if __name__ == "__main__":
    main()
