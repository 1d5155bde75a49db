"""Speed settings keep the maths: packed vs unpacked and fused vs full-logits losses match on a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_train_cfg
from medtune.config import TrainConfig
from medtune.errors import ConfigError
from medtune.train import speed as speed_mod
from medtune.train.speed import SpeedError, fused_loss_on, resolve_attention
from medtune.train.sft import build_trainer

ROOT = Path(__file__).resolve().parents[1]


def cfg(model_dir, data, out, **kw):
    # One optimizer step sees the whole 20-example file, packed or not, so losses are comparable.
    return tiny_train_cfg(model_dir, data, out, **{"max_steps": 3, "per_device_train_batch_size": 20, "max_seq_length": 512,
                                                   "save_steps": 100, "lr_scheduler_type": "constant", **kw})


def first_losses(config) -> tuple[list[float], object]:
    trainer, _, cb = build_trainer(config)
    trainer.train()
    return [h["loss"] for h in cb.history if "loss" in h], trainer


def test_packing_gives_the_unpacked_losses(tiny_model_dir, sft_file, tmp_path):
    plain, t_plain = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "a", packing=False))
    packed, t_packed = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "b", packing=True))
    assert len(t_plain.train_dataset) == 20
    assert len(t_packed.train_dataset) < 10, "examples were not packed into fewer rows"
    assert t_packed.medtune_speed["packing"] is True
    # Equal first loss: same logits, so no cross-attention between packed examples. Steps 2-3 agree
    # too (same gradients), within what two Adam steps make of float summation-order noise.
    assert len(plain) == len(packed) == 3
    assert packed[0] == pytest.approx(plain[0], rel=1e-5)
    assert packed[1:] == pytest.approx(plain[1:], rel=1e-3)
    assert plain[2] < plain[0]


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_fused_chunked_loss_matches_full_logits_loss(qwen_dir, sft_file, tmp_path):
    fused, t_fused = first_losses(cfg(qwen_dir, sft_file, tmp_path / "a", fused_loss=True))
    full, t_full = first_losses(cfg(qwen_dir, sft_file, tmp_path / "b", fused_loss=False))
    assert type(t_fused).__name__ == "SFTTrainer" and type(t_full).__name__ == "PlainLossSFTTrainer"
    assert fused[0] == pytest.approx(full[0], rel=1e-5)
    assert fused[1:] == pytest.approx(full[1:], rel=1e-3)


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """CPU stand-in for torch's varlen_attn: causal SDPA on each example's own tokens."""
    assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and max_q == int(cu_q.diff().max())
    reference_varlen.calls += 1
    parts = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # (heads, len, head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        parts.append(out.transpose(0, 1))
    return torch.cat(parts)


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_varlen_attention_glue_gives_unpacked_losses(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    # The CUDA kernel is swapped for a CPU reference, so this checks medtune's glue: layout, offsets, GQA, scale.
    reference_varlen.calls = 0
    monkeypatch.setattr(speed_mod, "_varlen_kernel", lambda: reference_varlen)
    plain, _ = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "a", packing=False))
    packed, trainer = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "b", attn_implementation="varlen"))
    assert trainer.model.config._attn_implementation == speed_mod.VARLEN
    assert reference_varlen.calls >= 3 * 2  # every step, every layer
    assert packed[0] == pytest.approx(plain[0], rel=1e-5)
    assert packed[1:] == pytest.approx(plain[1:], rel=1e-3)


def test_defaults_on_cpu(qwen_dir, sft_file, tmp_path):
    trainer, _, _ = build_trainer(cfg(qwen_dir, sft_file, tmp_path / "o", torch_compile=True))
    speed = trainer.medtune_speed
    assert speed["packing"] and speed["fused_loss"] is torch.cuda.is_available()  # fused LM head: CUDA only
    assert fused_loss_on(TrainConfig(), cuda=True) and not fused_loss_on(TrainConfig(), cuda=False)
    assert fused_loss_on(TrainConfig(fused_loss=True), cuda=False)  # an explicit choice wins
    if not torch.cuda.is_available():
        assert speed["attn_implementation"] == "sdpa" and speed["liger_kernels"] is False
    assert trainer.model.config._attn_implementation == speed["attn_implementation"]
    assert trainer.args.torch_compile is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusals")
def test_explicit_gpu_only_settings_fail_clearly_on_cpu(qwen_dir, sft_file, tmp_path):
    with pytest.raises(SpeedError, match="flash-attn"):
        resolve_attention(TrainConfig(attn_implementation="flash_attention_2"))
    with pytest.raises(SpeedError, match="CUDA"):
        resolve_attention(TrainConfig(attn_implementation="varlen"))
    with pytest.raises(ConfigError, match="medtune\\[liger\\]"):
        build_trainer(cfg(qwen_dir, sft_file, tmp_path / "o", liger_kernels=True))
    assert resolve_attention(TrainConfig(attn_implementation="eager")) == "eager"


@pytest.mark.slow
def test_gpu_bench_harness_runs_on_cpu(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_gpu.py"), "--cpu", "--json", str(out),
                           "--docs", str(docs)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == {"baseline", "medtune"}
    for arm in arms.values():
        assert arm["tokens_per_s"] > 0 and arm["timed_steps"] >= 2 and arm["first_loss"] > 0
        assert arm["flops_per_token"] > 0 and 0 < arm["mfu"] < 1
    assert arms["medtune"]["settings"]["packing"] is True
    # Padding is counted out: the baseline's real tokens are fewer than the tokens it computes on.
    assert arms["baseline"]["real_tokens"] < arms["baseline"]["computed_tokens"]
    # The JSON keeps 2 decimals of the ratio and 1 of each rate: compare to that precision, never to the rounding.
    ratio = arms["medtune"]["tokens_per_s"] / arms["baseline"]["tokens_per_s"]
    assert abs(result["ratio_tokens_per_s"] - ratio) <= 0.005 + 0.05 * (1 + ratio) / arms["baseline"]["tokens_per_s"] + 1e-9
    table = docs.read_text()
    assert "| baseline |" in table and "| medtune |" in table and "bench/train_gpu.py --cpu" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU packed path")
def test_cpu_packed_path_is_padding_free_sdpa_without_a_redraw_thread(tiny_model_dir, sft_file, tmp_path):
    # On CPU the packed default stays trl's padding-free rows with per-example position ids under SDPA
    # (per-example causal SDPA calls measured slower than the dense block-diagonal mask, issue 16), and
    # no rich redraw thread competes with torch's intra-op threads during training.
    import threading

    from rich.live import _RefreshThread
    from transformers import TrainerCallback

    seen = []

    class Threads(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            seen.append([type(t) for t in threading.enumerate()])

    trainer, _, cb = build_trainer(cfg(tiny_model_dir, sft_file, tmp_path / "p", max_steps=2))
    trainer.add_callback(Threads())
    trainer.train()
    assert trainer.padding_free and trainer.medtune_speed["attn_implementation"] == "sdpa"
    assert len(seen) == 2 and not any(_RefreshThread in types for types in seen)
    assert [h["step"] for h in cb.history if "loss" in h] == [1, 2]


def test_cpu_packed_rows_are_padded_to_one_shape_without_changing_the_losses(tiny_model_dir, sft_file, tmp_path):
    # Issue 16: varying row lengths let glibc fragment the heap (peak RSS +1.2 GiB over 36 steps); on
    # CPU every packed row is padded to max_seq_length with one-token sequences labelled -100.
    from medtune.train.speed import pad_multiple

    assert pad_multiple(TrainConfig(max_seq_length=256), cuda=False) == 256
    assert pad_multiple(TrainConfig(max_seq_length=256), cuda=True) is None
    assert pad_multiple(TrainConfig(packing=False), cuda=False) is None
    assert pad_multiple(TrainConfig(pad_to_multiple_of=0), cuda=False) is None
    shapes = []
    padded, t_pad = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "a", per_device_train_batch_size=1,
                                     max_seq_length=128))
    plain, t_plain = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "b", per_device_train_batch_size=1,
                                      max_seq_length=128, pad_to_multiple_of=0))
    assert t_pad.medtune_speed["pad_to_multiple_of"] == (None if torch.cuda.is_available() else 128)
    if torch.cuda.is_available():
        return
    for trainer in (t_pad, t_plain):
        batch = next(iter(trainer.get_train_dataloader()))
        shapes.append(tuple(batch["input_ids"].shape))
        real = sum(len(ids) for ids in trainer.train_dataset[:1]["input_ids"])
        assert int((batch["labels"] != -100).sum()) == int((batch["labels"][:, :real] != -100).sum())
    assert shapes[0] == (1, 128) and shapes[1][1] < 128, shapes
    assert padded[0] == pytest.approx(plain[0], rel=1e-5)
    assert padded[1:] == pytest.approx(plain[1:], rel=1e-3)
    # trl's num_tokens log counts real tokens only, padded or not
    tokens = [[h["num_tokens"] for h in t.state.log_history if "num_tokens" in h] for t in (t_pad, t_plain)]
    assert tokens[0] == tokens[1] and tokens[0][-1] > 0


def test_answer_only_logits_give_transformers_loss_and_gradients(tiny_model_dir, sft_file, tmp_path):
    # Issue 16: the LM head runs only where there is a target; loss and LoRA gradients must equal
    # transformers' full-logits ForCausalLMLoss on the same packed batch.
    from transformers import Trainer

    from medtune.train.speed import keeps_logits

    trainer, _, _ = build_trainer(cfg(tiny_model_dir, sft_file, tmp_path / "o", per_device_train_batch_size=4,
                                      max_seq_length=256))
    assert type(trainer).__name__ == "PlainLossSFTTrainer" or torch.cuda.is_available()
    model = trainer.model
    assert keeps_logits(model)
    batch = next(iter(trainer.get_train_dataloader()))
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    results = []
    for compute in (Trainer.compute_loss, type(trainer).compute_loss):
        model.zero_grad()
        torch.manual_seed(0)  # the same LoRA-dropout masks in both passes
        loss, out = compute(trainer, model, dict(batch), return_outputs=True, num_items_in_batch=None)
        loss.backward()
        results.append((loss.item(), out.logits.shape, [p.grad.clone() for p in lora]))
    (full, full_shape, full_grads), (mine, mine_shape, mine_grads) = results
    targets = int((batch["labels"][:, 1:] != -100).sum())
    from medtune.train.speed import LOGITS_BUCKET

    assert mine_shape[0] == min(-(-targets // LOGITS_BUCKET) * LOGITS_BUCKET, batch["labels"].numel())
    assert targets <= mine_shape[0] < batch["labels"].numel() == full_shape[0] * full_shape[1]
    assert mine == pytest.approx(full, rel=1e-5)
    for a, b in zip(full_grads, mine_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in mine_grads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU bf16-autocast path")
def test_bf16_frozen_base_gives_the_autocast_losses_with_fp32_lora_and_optimizer_state(tiny_model_dir, sft_file, tmp_path):
    # Issue 32: the frozen base's linear weights stored in bf16 once instead of cast by autocast in every
    # forward. The matmuls see the same bf16 operands, so the losses equal the fp32-master path's.
    from medtune.train.speed import bf16_frozen_base_on

    assert bf16_frozen_base_on(TrainConfig(bf16=True), cuda=False)
    assert not bf16_frozen_base_on(TrainConfig(bf16=False), cuda=False)
    assert not bf16_frozen_base_on(TrainConfig(bf16=True), cuda=True)
    assert not bf16_frozen_base_on(TrainConfig(bf16=True, method="full"), cuda=False)
    assert not bf16_frozen_base_on(TrainConfig(bf16=True, objective="dpo"), cuda=False)
    assert bf16_frozen_base_on(TrainConfig(bf16=True, objective="pt"), cuda=False)
    with pytest.raises(SpeedError, match="bf16_frozen_base=true needs train.bf16=true"):
        bf16_frozen_base_on(TrainConfig(bf16_frozen_base=True), cuda=False)
    master, t_master = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "a", bf16=True, bf16_frozen_base=False))
    frozen, t_frozen = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "b", bf16=True))
    assert t_frozen.medtune_speed["bf16_frozen_base"] is True and t_master.medtune_speed["bf16_frozen_base"] is False
    assert frozen[0] == pytest.approx(master[0], rel=1e-6)
    assert frozen[1:] == pytest.approx(master[1:], rel=1e-3)
    assert frozen[2] < frozen[0]
    params = dict(t_frozen.model.named_parameters())
    base_linear = [n for n in params if n.endswith("base_layer.weight")]
    assert base_linear and all(params[n].dtype == torch.bfloat16 for n in base_linear)
    assert params[next(n for n in params if "lm_head" in n)].dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in params.items() if "embed_tokens" in n or "norm" in n)
    lora = [p for p in params.values() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    state = [v for s in t_frozen.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    assert state and all(v.dtype == torch.float32 for v in state)


def test_bf16_frozen_base_leaves_a_tied_lm_head_and_its_embedding_in_fp32(tokenizer):
    # SmolLM2 ties its LM head to the token embedding: casting the head would cast the embedding, and
    # the residual stream would run in bf16 (first loss 2.662 instead of 2.671 on smollm2-135m).
    from tests.conftest import build_model
    from medtune.train.speed import cast_frozen_linears

    model = build_model("qwen2", len(tokenizer))
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    saved = cast_frozen_linears(model, torch.bfloat16)
    assert model.lm_head.weight.dtype == model.model.embed_tokens.weight.dtype == torch.float32
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    linear = sum(p.numel() for n, p in model.named_parameters() if "layers." in n and "proj" in n)
    assert saved == 2 * linear


def test_dropped_positions_draw_an_iid_bernoulli_mask():
    from medtune.train.speed import dropped_positions

    gen = torch.Generator().manual_seed(0)
    n, p, draws = 40, 0.2, 5000
    counts, pairs, sizes = torch.zeros(n), 0, []
    for _ in range(draws):
        pos = dropped_positions(n, p, gen)
        assert torch.all(pos[1:] > pos[:-1]) and (len(pos) == 0 or (pos[0] >= 0 and pos[-1] < n))
        mask = torch.zeros(n)
        mask[pos] = 1
        counts += mask
        pairs += int((mask[:-1] * mask[1:]).sum())  # neighbours both dropped: p^2 each if independent
        sizes.append(len(pos))
    sigma = (p * (1 - p) / draws) ** 0.5
    assert torch.all((counts / draws - p).abs() < 5 * sigma)  # every position dropped with probability p
    assert abs(pairs / (draws * (n - 1)) - p * p) < 5 * (p * p / (draws * (n - 1))) ** 0.5
    mean, var = sum(sizes) / draws, sum((s - sum(sizes) / draws) ** 2 for s in sizes) / draws
    assert abs(mean - n * p) < 0.1 and abs(var / (n * p * (1 - p)) - 1) < 0.1  # Binomial(n, p) count
    big = dropped_positions(512 * 4864, 0.05, gen)  # a long mask: one draw is normally enough, and it ends at n
    assert abs(len(big) / (512 * 4864) - 0.05) < 0.002 and int(big[-1]) < 512 * 4864
    assert len(dropped_positions(10, 0.0)) == 0 and len(dropped_positions(0, 0.5)) == 0


def test_sparse_dropout_scales_kept_elements_and_passes_their_gradient():
    from medtune.train.speed import SparseDropout

    torch.manual_seed(0)
    drop, x = SparseDropout(0.3), torch.randn(64, 48, requires_grad=True)
    out = drop.train()(x)
    kept = out != 0
    assert 0.6 < kept.float().mean() < 0.8
    assert torch.allclose(out[kept], x[kept] / 0.7)
    out.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.7)
    assert drop.eval()(x) is x


def test_cpu_lora_dropout_is_sparse_by_default_with_the_native_first_loss(tiny_model_dir, sft_file, tmp_path):
    from medtune.train.speed import SparseDropout, sparse_lora_dropout_on

    assert sparse_lora_dropout_on(TrainConfig(), cuda=False) and not sparse_lora_dropout_on(TrainConfig(), cuda=True)
    assert not sparse_lora_dropout_on(TrainConfig(lora_dropout=0.0), cuda=False)
    assert not sparse_lora_dropout_on(TrainConfig(method="full"), cuda=False)
    native, t_native = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "a", lora_dropout=0.1, sparse_lora_dropout=False))
    sparse, t_sparse = first_losses(cfg(tiny_model_dir, sft_file, tmp_path / "b", lora_dropout=0.1))
    drops = [m for m in t_sparse.model.modules() if isinstance(m, SparseDropout)]
    assert drops and t_sparse.medtune_speed["sparse_lora_dropout"] == len(drops)
    assert all(m.p == 0.1 for m in drops)
    assert t_native.medtune_speed["sparse_lora_dropout"] == 0
    assert not any(isinstance(m, SparseDropout) for m in t_native.model.modules())
    # step 1: LoRA B is zero, so the dropout mask cannot change the loss; later steps differ by the mask only
    assert sparse[0] == pytest.approx(native[0], rel=1e-6)
    assert sparse[1:] == pytest.approx(native[1:], rel=2e-2)
    assert sparse[2] < sparse[0]


def test_train_cli_reports_sparse_lora_dropout_and_set_false_turns_it_off(qwen_dir, sft_file, tmp_path):
    # As a user types it; docs/training.md says `false` gives torch's dropout.
    import re

    from typer.testing import CliRunner

    from medtune.cli import app

    base = ["train", "--model", str(qwen_dir), "--train-file", str(sft_file), "--max-steps", "1", "--save-steps", "10"]
    on = CliRunner().invoke(app, [*base, "--output-dir", str(tmp_path / "on")])
    off = CliRunner().invoke(app, [*base, "--output-dir", str(tmp_path / "off"), "--set", "train.sparse_lora_dropout=false"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    n_on = int(re.search(r"sparse_lora_dropout=(\d+)", " ".join(on.output.split())).group(1))
    n_off = int(re.search(r"sparse_lora_dropout=(\d+)", " ".join(off.output.split())).group(1))
    assert n_on > 0 and n_off == 0
