"""The real CLI entry point: chat (one-shot and interactive), errors without tracebacks, and `medtune run`."""

import json
import subprocess
import sys

import pytest

from medtune.recipe import load_recipe
from medtune.run import run_recipe


def medtune(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "medtune", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.slow
def test_chat_one_shot_matches_library_greedy(qwen_dir):
    from medtune.models import load_chat_model
    from medtune.config import GenerationSettings, SafetyConfig
    from medtune.generation import stream_chat
    from medtune.safety import guarded_stream

    r = medtune("chat", "--model", qwen_dir, "--prompt", "What is hypertension?", "--max-new-tokens", 12)
    assert r.returncode == 0, r.stderr
    model, tok = load_chat_model(str(qwen_dir))
    # The CLI answers through the shared safety path (default system prompt + first-turn disclaimer).
    greedy = GenerationSettings(max_new_tokens=12)
    expected = "".join(guarded_stream([{"role": "user", "content": "What is hypertension?"}], SafetyConfig(),
                                      lambda m: stream_chat(model, tok, m, greedy)))
    assert expected.strip() and r.stdout.strip() == expected.strip()


def test_reply_cut_inside_a_character_drops_the_partial_bytes_only():
    from medtune.generation import drop_partial_tail

    assert "".join(drop_partial_tail(["흡입기의 ", "흡\ufffd", "\ufffd"])) == "흡입기의 흡"  # cut by max_new_tokens
    assert list(drop_partial_tail(["a\ufffd", "b", ""])) == ["a", "\ufffdb"]  # not at the end: kept as generated


@pytest.mark.slow
def test_chat_interactive_reset_and_exit(qwen_dir):
    r = medtune("chat", "--model", qwen_dir, "--max-new-tokens", 4, "--system", "Be brief.",
                stdin="What is asthma?\n/reset\nAnd gout?\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant>") == 2 and "conversation cleared" in r.stdout


@pytest.mark.slow
def test_cli_errors_are_clear_and_exit_2(tmp_path, qwen_dir):
    r = medtune("train", "--set", "train.learnin_rate=1")
    assert r.returncode == 2 and "train.learnin_rate" in r.stderr and "Traceback" not in r.stderr
    r = medtune("chat", "--model", tmp_path / "nope", "--prompt", "hi")
    assert r.returncode == 2 and "cannot resolve model" in r.stderr and "Traceback" not in r.stderr
    r = medtune("train", "--model", qwen_dir, "--train-file", tmp_path / "missing.jsonl", "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and "missing.jsonl" in r.stderr and "Traceback" not in r.stderr
    binary = tmp_path / "data.jsonl"
    binary.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # e.g. a zip saved with a .jsonl name
    r = medtune("train", "--model", qwen_dir, "--train-file", binary, "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and "data.jsonl" in r.stderr and "binary" in r.stderr and "Traceback" not in r.stderr
    r = medtune("train", "--model", qwen_dir, "--train-file", tmp_path / "x.jsonl", "--launcher", "accelerate")
    assert r.returncode == 2 and "--config-file" in r.stderr


def test_help_lists_field_descriptions():
    r = medtune("train", "--help")
    assert r.returncode == 0 and "train.learning_rate" in r.stdout and "Peak learning rate" in r.stdout


def recipe_file(tmp_path, qwen_dir, sft_file):
    p = tmp_path / "r.yaml"
    p.write_text(f"""
model: {qwen_dir}
output_dir: {tmp_path / 'run'}
seed: 3
train: {{train_file: {sft_file}, max_steps: 4, learning_rate: 1.0e-2, per_device_train_batch_size: 4, save_steps: 100}}
merge: {{}}
samples: {{prompts: ["What is hypertension?"], generation: {{max_new_tokens: 6}}}}
""")
    return p


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_run_recipe_manifests_skip_and_force(tmp_path, qwen_dir, sft_file):
    p = recipe_file(tmp_path, qwen_dir, sft_file)
    first = run_recipe(load_recipe(p))
    assert [s["status"] for s in first.values()] == ["ran", "ran", "ran"]
    run = tmp_path / "run"
    for stage, sub in (("train", "adapter"), ("merge", "merged"), ("samples", "samples")):
        m = json.loads((run / sub / "manifest.json").read_text())
        assert m["stage"] == stage and m["seed"] == 3 and m["packages"]["torch"] and m["inputs"] and m["outputs"]
    assert json.loads((run / "adapter" / "manifest.json").read_text())["config"]["max_steps"] == 4
    sample = json.loads((run / "samples" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"] == "What is hypertension?" and "answer" in sample
    again = run_recipe(load_recipe(p))
    assert [s["status"] for s in again.values()] == ["skipped", "skipped", "skipped"]
    changed = run_recipe(load_recipe(p, ["samples.generation.max_new_tokens=3"]))
    assert [s["status"] for s in changed.values()] == ["skipped", "skipped", "ran"]
    forced = run_recipe(load_recipe(p), force=True, only=["train"])
    assert list(forced) == ["train"] and forced["train"]["status"] == "ran"


@pytest.mark.slow
def test_run_cli_prints_how_to_chat(tmp_path, qwen_dir, sft_file):
    p = recipe_file(tmp_path, qwen_dir, sft_file)
    r = medtune("run", p, "--set", "samples.prompts=[Hi]")
    assert r.returncode == 0, r.stderr
    assert f"medtune chat --model {tmp_path / 'run' / 'merged'}" in r.stdout


def test_models_list_fits_80_columns_in_a_pipe():
    """Pack names are never cut and no line is wider than 80 columns when stdout is not a terminal."""
    from typer.testing import CliRunner

    from medtune.cli import app
    from medtune.models import PACKS

    out = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "80"}).output
    assert max(len(line) for line in out.splitlines()) <= 80
    assert all(name in out for name in PACKS)


def test_run_only_names_a_stage_the_recipe_has(tmp_path, qwen_dir, sft_file):
    """`--only index` (the directory's name, not the stage's) used to run nothing and say nothing."""
    p = recipe_file(tmp_path, qwen_dir, sft_file)
    r = medtune("run", p, "--only", "index")
    assert r.returncode == 2 and "--only index: is not a stage" in r.stderr and "train, merge, samples" in r.stderr
    r = medtune("run", p, "--only", "rag")
    assert r.returncode == 2 and "--only rag: is not in this recipe" in r.stderr
    assert not (tmp_path / "run").exists()
