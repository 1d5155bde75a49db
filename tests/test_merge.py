"""Merge: logits of the merged model equal the adapter model's; greedy output identical; bad bases refused."""

import json

import pytest
import torch

from medtune.config import GenerationSettings, MergeConfig, TrainConfig
from medtune.generation import chat_once, render_prompt
from medtune.merge import MergeError, merge_adapter
from medtune.models import ModelError, load_model, load_tokenizer
from medtune.train.sft import run_sft


@pytest.fixture(scope="module")
def adapter(qwen_dir, tmp_path_factory):
    import tests.conftest as c
    data = tmp_path_factory.mktemp("d") / "t.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in c.SAMPLES * 4))
    out = tmp_path_factory.mktemp("adapter")
    # lora_B is zero at init; train a few steps with a large rate so the adapter really changes outputs.
    run_sft(TrainConfig(model=str(qwen_dir), train_file=data, output_dir=out, max_steps=8, learning_rate=2e-2,
                        per_device_train_batch_size=4, warmup_ratio=0.0))
    return out


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_merge_parity_and_greedy_equality(qwen_dir, adapter, tmp_path):
    out = tmp_path / "merged"
    summary = merge_adapter(MergeConfig(adapter=adapter, output_dir=out))
    assert summary["max_abs_logit_diff"] <= 1e-4
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()  # model card: merge parity, training recipe, safety notice
    assert "## Merge" in card and "| learning_rate | 0.02 |" in card and "## Safety notice" in card
    tok = load_tokenizer(str(out))
    assert tok.chat_template  # chat template travels with the merged model
    with_adapter = load_model(str(qwen_dir), adapter=adapter).eval()
    merged = load_model(str(out)).eval()
    ids = render_prompt(tok, [{"role": "user", "content": "What is hypertension?"}])
    with torch.no_grad():
        assert (with_adapter(ids).logits - merged(ids).logits).abs().max().item() <= 1e-4
    greedy = GenerationSettings(temperature=0, max_new_tokens=20)
    msgs = [{"role": "user", "content": "What is hypertension?"}]
    assert chat_once(with_adapter, tok, msgs, greedy) == chat_once(merged, tok, msgs, greedy)
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert tok.eos_token_id in (eos if isinstance(eos, list) else [eos])


def test_merge_refuses_4bit_base(adapter, tmp_path, qwen_dir):
    q = tmp_path / "q4"
    q.mkdir()
    cfg = json.loads((qwen_dir / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match="unquantized base"):
        merge_adapter(MergeConfig(adapter=adapter, model=str(q), output_dir=tmp_path / "m"))


def test_adapter_on_wrong_base_is_refused(adapter, tmp_path, tokenizer):
    from tests.conftest import build_model
    other = tmp_path / "other"
    m = build_model("llama", len(tokenizer))
    m.config.num_hidden_layers = 2
    m.save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(ModelError, match="different base model"):
        load_model(str(other), adapter=adapter)
