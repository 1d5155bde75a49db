"""Batched greedy generation gives the unbatched answers (fact recall and generate-mode MCQ) on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medtune.cli import app
from medtune.config import GenerationSettings
from medtune.eval.backends import generate_replies, load_backend
from medtune.eval.config import FactConfig, McqConfig
from medtune.eval.fact import run_fact
from medtune.eval.mcq import run_mcq

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "examples" / "eval" / "quickstart_facts.jsonl"
MCQ = ROOT / "examples" / "eval" / "mcq_mixed.jsonl"


def answers(path: Path, column: str = "answer") -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r[column] for r in rows}


def test_fact_answers_batched_equal_one_at_a_time(qwen_dir, tmp_path):
    # The 18 quickstart questions (prompts of different lengths: left padding), greedy, 24 new tokens.
    backend = load_backend(f"tiny={qwen_dir}")
    gen = GenerationSettings(max_new_tokens=24)
    single = run_fact(FactConfig(data=FACTS, model="tiny", batch_size=1, generation=gen, output_dir=tmp_path / "one"), backend=backend)
    cli = CliRunner().invoke(app, ["eval", "fact", str(FACTS), "--model", f"tiny={qwen_dir}", "--batch-size", "18",
                                   "--set", "fact.generation.max_new_tokens=24", "--output-dir", str(tmp_path / "all")])
    assert cli.exit_code == 0, cli.output
    one, batched = answers(tmp_path / "one" / "predictions.jsonl"), answers(tmp_path / "all" / "predictions.jsonl")
    assert single["n"] == len(one) == len(batched) == 18
    assert batched == one
    assert len({len(a) for a in one.values()}) > 1, "all answers the same length: the padding was not exercised"


def test_generate_replies_pad_on_the_left_and_keep_each_rows_stop(qwen_dir):
    backend = load_backend(f"tiny={qwen_dir}")
    prompts = [[{"role": "user", "content": q}] for q in ("Hi", "What is the usual first treatment of type 2 diabetes in adults?")]
    gen = GenerationSettings(max_new_tokens=16)
    together = generate_replies(backend, prompts, gen)
    alone = [generate_replies(backend, [p], gen)[0] for p in prompts]
    assert [(r.text, r.stopped, r.new_tokens) for r in together] == [(r.text, r.stopped, r.new_tokens) for r in alone]


def test_generate_mode_mcq_batched_equal_one_at_a_time(qwen_dir, tmp_path):
    backend = load_backend(f"tiny={qwen_dir}")
    gen = GenerationSettings(max_new_tokens=6)
    runs = {bs: run_mcq(McqConfig(data=MCQ, model="tiny", mode="generate", batch_size=bs, max_items=12, generation=gen,
                                  output_dir=tmp_path / str(bs)), backend=backend) for bs in (1, 12)}
    replies = {bs: answers(tmp_path / str(bs) / "predictions.jsonl", "reply") for bs in runs}
    assert replies[1] == replies[12] and len(replies[1]) == 12
