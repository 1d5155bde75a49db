"""Shared fixtures: a tiny byte-level BPE tokenizer with a ChatML template and tiny random models.

Everything is built in-process (no hub, no packs), so unit tests run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Hypertension is blood pressure of 140/90 mmHg or higher on repeated measurements.",
    "Metformin is a first-line medicine for type 2 diabetes; take it with meals.",
    "Asthma causes wheezing and shortness of breath; a salbutamol inhaler relieves symptoms.",
    "高血压患者应减少盐的摄入，规律运动，按时服药。糖尿病的诊断标准是空腹血糖≥7.0 mmol/L。",
    "고혈압 환자는 소금 섭취를 줄이고 규칙적으로 운동해야 합니다. 천식은 기침과 호흡곤란을 일으킵니다.",
    "user assistant system What is the dose? Call emergency services if chest pain lasts.",
]


def build_tokenizer(path: Path | None = None):
    """A ~600-token byte-level BPE tokenizer with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML
    if path is not None:
        fast.save_pretrained(path)
    return fast


def build_model(kind: str, vocab_size: int, seed: int = 0):
    """A 2-layer, hidden-64 random-weight Qwen2 or Llama causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  eos_token_id=2, pad_token_id=0, bos_token_id=None, tie_word_embeddings=False)
    config = Qwen2Config(**common) if kind == "qwen2" else LlamaConfig(**common)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def tiny_model_dir(request, tmp_path_factory, tokenizer):
    """A saved tiny model directory (model + tokenizer + chat template) usable as ``--model``."""
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model = build_model(request.param, len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-qwen2-only")
    model = build_model("qwen2", len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


SAMPLES = [
    {"instruction": "What is hypertension?", "output": "Blood pressure of 140/90 mmHg or higher on repeated measurements."},
    {"instruction": "How should metformin be taken?", "input": "Adult with type 2 diabetes.", "output": "Take it with meals."},
    {"messages": [{"role": "system", "content": "You are a careful medical assistant."},
                  {"role": "user", "content": "I have wheezing."},
                  {"role": "assistant", "content": "How long have you had it?"},
                  {"role": "user", "content": "Two days."},
                  {"role": "assistant", "content": "A salbutamol inhaler relieves symptoms; see a doctor."}]},
    {"instruction": "高血压患者应注意什么？", "output": "减少盐的摄入，规律运动，按时服药。"},
    {"instruction": "고혈압 환자는 무엇을 해야 하나요?", "output": "소금 섭취를 줄이고 규칙적으로 운동해야 합니다."},
]


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in SAMPLES * 4) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_gguf(qwen_dir, tmp_path_factory):
    """The tiny Qwen2 model as an f16 GGUF written by llama.cpp's converter (needs the medtune[gguf] extra).

    The converter comes from ``$MEDTUNE_LLAMA_CPP`` or the cache, else it is downloaded once (see
    :mod:`medtune.export.gguf`). The tiny tokenizer is a plain GPT-2 byte-level BPE, which the converter's
    hash table cannot know: ``tokenizer_pre="gpt-2"``.
    """
    pytest.importorskip("llama_cpp", reason="needs the gguf extra: pip install 'medtune[gguf]'")
    from medtune.export.gguf import convert_to_gguf

    return convert_to_gguf(qwen_dir, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", tokenizer_pre="gpt-2")


FIXTURES = Path(__file__).parent / "fixtures"  # files in real formats, written for medtune's tests
EVAL_FIXTURES = FIXTURES / "eval"


def tiny_train_cfg(model_dir, data, out, **kw):
    """A TrainConfig for the tiny models: 20 LoRA steps, batch 4, lr 5e-3, no warm-up, seed 1; ``kw`` overrides."""
    from medtune.config import TrainConfig

    base = dict(model=str(model_dir), train_file=data, output_dir=out, max_steps=20, learning_rate=5e-3,
                per_device_train_batch_size=4, save_steps=10, warmup_ratio=0.0, seed=1)
    return TrainConfig(**{**base, **kw})


def train_and_check_adapter_only(trainer) -> dict:
    """Train ``trainer`` and assert that only LoRA weights changed (every lora_B moved, nothing else did).

    Returns:
        ``{name: parameter before training}`` for further checks.
    """
    import torch

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert [n for n in before if "lora_" in n], "no LoRA parameters were created"
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    return before


def pytest_collection_modifyitems(config, items):
    """Quick tier (``-m "not slow"``): tests over both tiny architectures run on qwen2 only; llama in the full run."""
    for item in items:
        if getattr(item, "callspec", None) and item.callspec.params.get("tiny_model_dir") == "llama":
            item.add_marker(pytest.mark.slow)
