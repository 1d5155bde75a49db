"""bench/limits.py: the harness runs (quick mode, no timing assertions) and its FLOP count is torch's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import limits  # noqa: E402


def test_quick_limits_write_json_and_tables(qwen_dir, tmp_path):
    out = tmp_path / "limits.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "limits.py"), "--quick", "--model", str(qwen_dir),
                           "--train", "medtune=100", "--decode", "hf=fp32:5", "--decode", "hf2=bf16:8:2", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for t in ("1", "2"):
        row = report["limits"]["threads"][t]
        assert all(row[k]["best"] > 0 and row[k]["cpu_best"] > 0 for k in ("fp32_gflops", "bf16_gflops", "copy_gbs", "triad_gbs"))
    rows = {r["label"]: r for r in report["shares"]}
    counts = report["counts"]
    assert rows["hf"]["bytes_per_token"] == 4 * (counts["linear"] + counts["lm_head"])
    assert rows["hf2"]["bytes_per_token"] == 2 * (counts["linear"] + counts["lm_head"]) and rows["hf2"]["threads"] == 2
    assert rows["medtune"]["achieved"] == pytest.approx(report["train_flops_per_token"]["total"] * 100 / 1e9)
    assert "| 2 |" in proc.stdout and "| decode (GB/s) | hf |" in proc.stdout and "load average" in proc.stdout


def test_train_flops_per_token_equal_torch_flop_counter_on_a_lora_step(tokenizer):
    # Forward + backward of a LoRA model (r 8 on every linear layer, frozen base): the analytic count of
    # bench/limits.py must equal torch.utils.flop_counter's count of the matmuls actually run. Eager attention,
    # whole square (the counter does not know about causal masks); inputs_embeds that need a gradient, so every
    # layer computes its input gradient, as in the middle of a deep model.
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from tests.conftest import build_model

    model = build_model("qwen2", len(tokenizer))
    model.set_attn_implementation("eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    seq = 24
    embeds = model.get_input_embeddings()(torch.randint(0, len(tokenizer), (1, seq))).detach().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        logits = model(inputs_embeds=embeds).logits
        logits.float().logsumexp(-1).sum().backward()
    counts = limits.model_counts(model.config.to_dict())
    flops = limits.train_flops_per_token(counts, seq, answer_share=1.0, lora_r=8, causal=False)
    assert counter.get_total_flops() == pytest.approx(flops["total"] * seq, rel=1e-9)


def test_background_load_pins_one_busy_process_per_core_and_stops_it():
    import vs_llamafactory

    with vs_llamafactory.background_load(1) as cpus:
        assert cpus == [sorted(os.sched_getaffinity(0))[-1]]
        children = [int(p) for p in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]
        loops = [pid for pid in children if "sched_setaffinity" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(loops) == 1 and os.sched_getaffinity(loops[0]) == set(cpus)
    assert not Path(f"/proc/{loops[0]}").exists()
    with vs_llamafactory.background_load(0) as cpus:
        assert cpus == []


@pytest.mark.slow
def test_decode_bench_runs_each_arm_and_compares_greedy_tokens(qwen_dir, tmp_path):
    out = tmp_path / "decode.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "decode.py"), "--model", str(qwen_dir), "--arms", "hf-fp32",
                           "hf-fp32-static", "--threads", "1", "--tokens", "6", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["arm"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"hf-fp32", "hf-fp32-static"}
    counts = limits.model_counts(limits.load_config(str(qwen_dir)))
    assert rows["hf-fp32"]["bytes_per_token"] == 4 * (counts["linear"] + counts["lm_head"])
    # a static KV cache changes where the keys live, not the greedy tokens
    assert rows["hf-fp32-static"]["same_leading_tokens_as_fp32"] == 6
    assert all(r["tokens_per_s"] > 0 for r in rows.values())


def test_vs_llamafactory_heldout_loss_weighs_answer_tokens_and_reads_the_adapter(qwen_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vs_llamafactory

    rows = [{"messages": [{"role": "user", "content": "What is aspirin for?"},
                          {"role": "assistant", "content": "Pain, fever and, at low dose, clot prevention."}]},
            {"messages": [{"role": "user", "content": "Dose?"}, {"role": "assistant", "content": "Ask your pharmacist."}]}]
    val = tmp_path / "validation.jsonl"
    val.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    base = vs_llamafactory.heldout_loss(str(qwen_dir), None, val)
    # by hand: sum of the answer tokens' cross-entropy over both conversations / their count
    tok, net = AutoTokenizer.from_pretrained(qwen_dir), AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    total, count = 0.0, 0
    for r in rows:
        k = len(tok.apply_chat_template(r["messages"][:1], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        ids = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]
        logp = torch.log_softmax(net(torch.tensor([ids])).logits[0].float(), -1)
        total -= sum(logp[i - 1, ids[i]].item() for i in range(k, len(ids)))
        count += len(ids) - k
    assert base["examples"] == 2 and base["tokens"] == count
    assert base["loss"] == pytest.approx(total / count, rel=1e-5)
    assert base["loss"] != pytest.approx(base["example_mean"], rel=1e-6)  # token- vs conversation-weighted
    # a fresh LoRA adapter (B = 0) changes nothing; one with non-zero B changes the loss
    peft = get_peft_model(net, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(tmp_path / "fresh")
    assert vs_llamafactory.heldout_loss(str(qwen_dir), str(tmp_path / "fresh"), val)["loss"] == pytest.approx(base["loss"], rel=1e-6)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(tmp_path / "trained")
    assert abs(vs_llamafactory.heldout_loss(str(qwen_dir), str(tmp_path / "trained"), val)["loss"] - base["loss"]) > 1e-3
