"""llama.cpp decode speed of one build of llama-cpp-python: tokens per wall and per CPU second, one sequence.

Imports only ``llama_cpp`` (no torch), so it runs under any virtualenv's python, e.g. one holding a
build made with ``CMAKE_ARGS=-DGGML_NATIVE=ON`` beside the portable one ``setup.sh`` makes
(``GGML_NATIVE=OFF``: AVX2/FMA). The method is ``bench/decode.py``'s: greedy, end-of-turn suppressed,
a warm-up run, then runs of 1 and N new tokens; decode speed = (N - 1) / the difference.

    .venv/bin/python bench/llamacpp_build.py model-q4_k_m.gguf model-q8_0.gguf --threads 1
    /tmp/native-venv/bin/python bench/llamacpp_build.py model-q4_k_m.gguf model-q8_0.gguf --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import time

PROMPT = ("<|im_start|>user\nExplain in detail how high blood pressure is diagnosed and treated in adults.<|im_end|>\n"
          "<|im_start|>assistant\n")


def _no_extra_buffers(llama_cpp) -> None:
    """Make ``Llama`` load with ``use_extra_bufts=False``: no AMX / repacked weight buffers (a native build's
    AMX path crashed in ``ggml_backend_amx_mul_mat`` on this VM; llama-cpp-python 0.3.36 has no argument for it)."""
    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_model_default_params = params
    llama_cpp.llama_cpp.llama_model_default_params = params


def decode(path: str, threads: int, tokens: int) -> dict:
    """Wall and CPU seconds of ``tokens`` - 1 decoded tokens (prefill excluded) on ``threads`` threads."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    eos = llm.token_eos()

    def no_eos(_, scores):
        scores[eos] = -float("inf")
        return scores

    wall, cpu = [], []
    for n in (2, 1, tokens):  # the first run warms up
        llm.reset()
        t0, c0, out = time.perf_counter(), time.process_time(), 0
        for _ in llm.generate(ids, temp=0.0, logits_processor=[no_eos]):
            out += 1
            if out >= n:
                break
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"file": os.path.basename(path), "threads": threads, "tokens_per_s": (tokens - 1) / (wall[2] - wall[1]),
            "tokens_per_cpu_s": (tokens - 1) / max(cpu[2] - cpu[1], 1e-9), "loadavg": os.getloadavg(),
            "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("gguf", nargs="+")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--no-extra-buffers", action="store_true", help="load without AMX / repacked weight buffers")
    args = p.parse_args()
    if args.no_extra_buffers:
        import llama_cpp

        _no_extra_buffers(llama_cpp)
    for path in args.gguf:
        for t in args.threads:
            print(json.dumps(decode(path, t, args.tokens)), flush=True)


if __name__ == "__main__":
    main()
