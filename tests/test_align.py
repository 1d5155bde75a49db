"""Preference tuning and GRPO on tiny random models: the loss falls, only adapter weights move,
DPO widens the chosen-minus-rejected margin, GRPO's mean reward grows."""

import json

import pytest
import torch

from tests.conftest import tiny_train_cfg, train_and_check_adapter_only
from medtune.preference_data import read_preferences
from medtune.train.preference import build_preference_trainer, pair_margins

PROMPTS = ["I have chest pain.", "What is the dose?", "I have wheezing.", "What is hypertension?",
           "高血压患者应注意什么？", "천식은 무엇인가요?", "Take metformin with meals?", "Shortness of breath."]
CHOSEN = "Call emergency services if chest pain lasts."
REJECTED = "Metformin is a first-line medicine."


@pytest.fixture
def pair_file(tmp_path):
    rows = [{"prompt": p, "chosen": CHOSEN, "rejected": REJECTED} for p in PROMPTS]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def cfg(model_dir, data, out, **kw):
    return tiny_train_cfg(model_dir, data, out, **{"max_steps": 12, "save_steps": 100, "max_seq_length": 128, **kw})


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_dpo_loss_falls_margin_grows_only_adapter_changes(qwen_dir, pair_file, tmp_path, tokenizer):
    trainer, stats, cb = build_preference_trainer(cfg(qwen_dir, pair_file, tmp_path / "o", objective="dpo"))
    pairs, _ = read_preferences(pair_file)
    model = trainer.model
    start = pair_margins(model.eval(), tokenizer, pairs)
    train_and_check_adapter_only(trainer)
    end = pair_margins(model.eval(), tokenizer, pairs)
    losses = [h["loss"] for h in cb.history if "loss" in h]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 0
    assert mean(losses[-3:]) < 0.5 * losses[0]
    assert mean(end) > mean(start) + 1.0 and all(e > s for s, e in zip(start, end))
    assert [h for h in cb.history if "rewards/margins" in h][-1]["rewards/margins"] > 0


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_rpo_alpha_adds_the_chosen_nll_to_the_dpo_loss(qwen_dir, pair_file, tmp_path, tokenizer):
    """rpo_alpha=0.5: step-0 loss = log 2 (policy == reference) + 0.5 x mean NLL per chosen token."""
    trainer, _, cb = build_preference_trainer(cfg(qwen_dir, pair_file, tmp_path / "o", objective="dpo",
                                                  rpo_alpha=0.5, max_steps=6))
    assert trainer.args.loss_type == ["sigmoid", "sft"] and trainer.args.loss_weights == [1.0, 0.5]
    model = trainer.model.eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]},
                                          {"role": "assistant", "content": CHOSEN}], tokenize=False)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    ids = torch.tensor([tokenizer(full, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    nll = -logps[n_prompt - 1:].mean().item()  # chosen tokens (same answer for every pair)
    train_and_check_adapter_only(trainer)
    losses = [h["loss"] for h in cb.history if "loss" in h]
    assert nll > 5.0  # random weights: near log(vocabulary)
    assert losses[0] == pytest.approx(0.6931 + 0.5 * nll, rel=0.03)
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
@pytest.mark.parametrize("objective", ["kto", "orpo"])
def test_kto_and_orpo_train_and_the_loss_falls(objective, qwen_dir, pair_file, tmp_path):
    trainer, stats, cb = build_preference_trainer(cfg(qwen_dir, pair_file, tmp_path / "o", objective=objective))
    assert stats.kept == (16 if objective == "kto" else 8)  # kto unpairs each pair
    train_and_check_adapter_only(trainer)
    losses = [h["loss"] for h in cb.history if "loss" in h]
    assert mean(losses[-3:]) < mean(losses[:3]) - 0.1


def test_medical_rewards_score_verifiable_answers():
    from medtune.rewards import fact_recall, format_reward, mcq_letter, urgent_care

    msg = lambda t: [{"role": "assistant", "content": t}]  # noqa: E731
    opts = {"A": "Aspirin", "B": "Metformin", "C": "Insulin"}
    comps = [msg("Answer: B"), msg("A."), msg("I am not sure."), msg("Metformin and diet.")]
    n = len(comps)
    assert mcq_letter([None] * n, comps, answer=["B", "B", "B", None], options=[opts, opts, opts, None]) == [1.0, 0.0, 0.0, None]
    assert fact_recall([None] * n, comps, expected=[None, None, None, ["metformin", "exercise"]],
                       synonyms=[None, None, None, {"exercise": ["diet"]}]) == [None, None, None, 1.0]
    assert format_reward([None] * n, comps, options=[opts, opts, opts, None]) == [1.0, 1.0, 0.0, 1.0]
    assert format_reward([None], [msg("x<|im_end|>")]) == [0.0]
    red, benign = [{"role": "user", "content": "I have crushing chest pain and sweating."}], [{"role": "user", "content": "How should I store insulin?"}]
    assert urgent_care([red, red, benign, benign], [msg("Call 911 now."), msg("Rest."), msg("Call 911 now."), msg("In the fridge.")]) == [1.0, 0.0, 0.0, 1.0]


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_grpo_mean_reward_grows_on_a_toy_verifiable_task(tmp_path, tokenizer):
    """A random 2-layer model cannot answer medical questions, so the toy task is one it can learn in
    seconds: reward = share of completion tokens in the lower half of the vocabulary (~0.5 at random).
    The output layer gets std-0.3 weights (conftest's 0.02 leaves logits so flat, ~0.16 std, that no
    hidden state can steer them and the reward cannot move with LoRA on the blocks alone)."""
    from tests.conftest import build_model
    from medtune.train.grpo import build_grpo_trainer

    model = build_model("qwen2", len(tokenizer))
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    half = len(tokenizer) // 2

    def low_tokens(prompts, completions, completion_ids, **_):
        return [sum(i < half for i in ids) / max(len(ids), 1) for ids in completion_ids]

    data = tmp_path / "tasks.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p}, ensure_ascii=False) for p in PROMPTS) + "\n", encoding="utf-8")
    trainer, stats, cb = build_grpo_trainer(cfg(tmp_path / "m", data, tmp_path / "o", objective="grpo", max_steps=16, learning_rate=5e-2,
                                                lr_scheduler_type="constant", per_device_train_batch_size=8, num_generations=4,
                                                max_completion_length=16), reward_funcs=[low_tokens])
    train_and_check_adapter_only(trainer)
    rewards = [h["reward"] for h in cb.history if "reward" in h]
    assert len(rewards) == 16 and "rewards/low_tokens/mean" in cb.history[-2]
    assert mean(rewards[-4:]) > mean(rewards[:4]) + 0.25


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_recipe_chains_sft_then_dpo_with_manifests_and_cli_objective(qwen_dir, pair_file, sft_file, tmp_path):
    """`medtune run`: train (sft) -> merge -> align (dpo on the merged model) -> align-merged; a rerun skips
    every stage; `medtune train RECIPE --set train.objective=dpo` trains DPO through the generated CLI."""
    import yaml
    from typer.testing import CliRunner

    from medtune.cli import app

    out = tmp_path / "run"
    common = dict(max_steps=2, per_device_train_batch_size=4, save_steps=100, max_seq_length=128)
    recipe = {"model": str(qwen_dir), "output_dir": str(out), "seed": 1,
              "train": {"train_file": str(sft_file), **common}, "merge": {},
              "align": {"train_file": str(pair_file), **common}}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    first = CliRunner().invoke(app, ["run", str(path)])
    assert first.exit_code == 0, first.output
    align_cfg = json.loads((out / "align" / "train_config.json").read_text())
    assert align_cfg["objective"] == "dpo" and align_cfg["model"] == str(out / "merged")
    assert json.loads((out / "align" / "medtune_base.json").read_text())["model"] == str(out / "merged")
    assert (out / "align-merged" / "config.json").is_file()
    assert all(json.loads((out / d / "manifest.json").read_text())["stage"] == s
               for d, s in (("adapter", "train"), ("merged", "merge"), ("align", "align")))
    again = CliRunner().invoke(app, ["run", str(path)])
    assert again.exit_code == 0 and again.output.count("up to date") == 3, again.output
    dpo = CliRunner().invoke(app, ["train", str(path), "--set", "train.objective=dpo", "--train-file", str(pair_file),
                                   "--output-dir", str(tmp_path / "cli-dpo")])
    assert dpo.exit_code == 0, dpo.output
    assert json.loads((tmp_path / "cli-dpo" / "train_summary.json").read_text())["objective"] == "dpo"
