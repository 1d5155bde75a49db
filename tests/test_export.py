"""medtune export: Ollama TEMPLATE equals the tokenizer's template; GGUF export, metadata and parity
(llama.cpp through the medtune[gguf] extra) on tiny random models; the llama.cpp chat/serve backend."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from gotemplate import render
from medtune.export.ollama import go_template, measure_turns, modelfile

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA3 = ("{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
          "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}"
          "{%- endif -%}{%- for message in loop_messages -%}{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
          "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if "
          "loop.first else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}"
          "{{'<start_of_turn>model\n'}}{%- endif -%}")
EXAONE = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}{{ '[|system|][|endofturn|]\n' }}"
          "{% endif %}{{ '[|' + message['role'] + '|]' + message['content'] }}{% if message['role'] == 'user' %}{{ '\n' }}"
          "{% else %}{{ '[|endofturn|]\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}")
CONVERSATIONS = [
    [("system", "You are careful."), ("user", "What is hypertension?")],
    [("system", "Be brief.\nUse plain words."), ("user", "I have wheezing."), ("assistant", "How long for?"),
     ("user", "Two days {{ not a template }}.")],
    [("system", "S"), ("user", "高血压患者应注意什么？"), ("assistant", "减少盐。"), ("user", "고혈압?"),
     ("assistant", "소금을 줄이세요."), ("user", "thanks")],
]


def _with_template(tokenizer, template: str, bos: str | None = None):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    if bos:
        tok.add_special_tokens({"bos_token": bos})
    return tok


@pytest.mark.parametrize("template,bos", [(None, None), (LLAMA3, "<|begin_of_text|>"), (GEMMA3, "<bos>"), (EXAONE, None)],
                         ids=["chatml", "llama3", "gemma", "exaone"])
def test_ollama_template_renders_like_the_chat_template(tokenizer, template, bos):
    tok = _with_template(tokenizer, template or tokenizer.chat_template, bos)
    go = go_template(measure_turns(tok))
    for conv in CONVERSATIONS:
        expected = tok.apply_chat_template([{"role": r, "content": c} for r, c in conv], tokenize=False,
                                           add_generation_prompt=True)
        if bos:  # llama.cpp's tokenizer adds the BOS; Ollama templates leave it out
            assert expected.startswith(bos)
            expected = expected[len(bos):]
        got = render(go, {"Messages": [{"Role": r, "Content": c} for r, c in conv]})
        assert got == expected


def test_modelfile_has_from_template_stops_and_system(tokenizer):
    text = modelfile("tiny-q8_0.gguf", tokenizer, ["<|im_end|>", "<|endoftext|>"], "Be careful.")
    assert "FROM ./tiny-q8_0.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n' in text
    assert 'SYSTEM """Be careful."""' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    conv = [{"Role": "system", "Content": "Be careful."}, {"Role": "user", "Content": "hi"}]
    assert render(template, {"Messages": conv}) == \
        "<|im_start|>system\nBe careful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------- GGUF (needs medtune[gguf])

PROMPTS = ["What is hypertension?", "高血压患者应注意什么？"]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """``medtune export DIR --format ollama --quant f16,q8_0,q4_k_m`` on the tiny qwen2 and llama models (real CLI)."""
    pytest.importorskip("llama_cpp", reason="needs the gguf extra: pip install 'medtune[gguf]'")
    from typer.testing import CliRunner

    from medtune.cli import app

    out = tmp_path_factory.mktemp("export")
    args = ["export", str(tiny_model_dir), "--format", "ollama", "--quant", "f16,q8_0,q4_k_m", "--tokenizer-pre", "gpt-2",
            "--output-dir", str(out)] + [x for p in PROMPTS for x in ("--prompts", p)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_gguf_files_keep_chat_template_and_end_of_turn(exported, tokenizer):
    from medtune.export.gguf import gguf_metadata

    files = json.loads((exported / "medtune_export.json").read_text())["files"]
    assert set(files) == {"f16", "q8_0", "q4_k_m"}
    for level, path in files.items():
        meta = gguf_metadata(path)
        assert meta["chat_template"] == tokenizer.chat_template, level
        assert meta["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    sizes = {k: Path(v).stat().st_size for k, v in files.items()}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]


def test_parity_f16_exact_and_quantized_levels_reported(exported):
    report = json.loads((exported / "parity.json").read_text())
    f16 = report["levels"]["f16"]
    assert f16["exact"] and f16["greedy_match"] == f16["tokens"] and f16["agreement"] == 1.0
    assert f16["tokenizer_match"] and f16["stops_are_eog"]
    assert all(len(t) == 32 or t[-1] == 2 for t in report["reference_tokens"])  # 32 tokens or ended at <|im_end|>
    for level in ("q8_0", "q4_k_m"):
        r = report["levels"][level]
        assert 0.0 <= r["agreement"] <= 1.0 and r["mean_abs_dlogprob"] >= 0.0 and r["stops_are_eog"]
    assert report["levels"]["q8_0"]["mean_abs_dlogprob"] <= report["levels"]["q4_k_m"]["mean_abs_dlogprob"]


def test_modelfile_and_model_card_next_to_the_export(exported):
    text = (exported / "Modelfile").read_text()
    name = Path(json.loads((exported / "medtune_export.json").read_text())["files"]["f16"]).name
    assert f"FROM ./{name}\n" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "SYSTEM \"\"\"You are a careful medical information assistant." in text
    card = (exported / "README.md").read_text()
    assert "## Safety notice" in card and "| q4_k_m |" in card


def test_same_greedy_answer_through_chat_and_serve(tiny_gguf):
    import httpx

    from medtune.chat import chat
    from medtune.config import ChatConfig, GenerationSettings, ServeConfig
    from servekit import running_server

    settings = GenerationSettings(max_new_tokens=24)
    said = chat(ChatConfig(model=str(tiny_gguf), backend="llamacpp", generation=settings), prompt="What is hypertension?",
                out=None)[-1]["content"]
    with running_server(ServeConfig(model=str(tiny_gguf), backend="llamacpp", generation=settings)) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json={"model": str(tiny_gguf), "max_tokens": 24,
                       "messages": [{"role": "user", "content": "What is hypertension?"}]}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == said


def test_push_to_hub_offline_says_what_to_do(tmp_path, monkeypatch):
    from medtune.errors import ExportError
    from medtune.export.stage import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="HF_HUB_OFFLINE.*huggingface-cli upload org/model"):
        push_to_hub(tmp_path, "org/model")


def test_llamacpp_backend_without_the_extra_gives_the_install_hint(monkeypatch, tmp_path):
    import sys

    from medtune.errors import ModelError
    from medtune.models import load_chat_model

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=r"pip install 'medtune\[gguf\]'"):
        load_chat_model(str(tmp_path / "m.gguf"), backend="llamacpp")


def test_recipe_export_section_resolves_to_the_merged_model_and_sample_prompts(tmp_path):
    from medtune.recipe import load_recipe, resolve
    from medtune.run import STAGES

    r = resolve(load_recipe(None, [f"output_dir={tmp_path}", "merge.tolerance=0.001", "samples.prompts=[hi]",
                                   "export.quant=[q4_k_m]"]))
    assert r.export.model == str(tmp_path / "merged") and r.export.output_dir == tmp_path / "export"
    assert r.export.prompts == ["hi"] and r.export.quant == ["q4_k_m"]
    assert list(STAGES).index("export") == list(STAGES).index("samples") + 1 < list(STAGES).index("eval")  # after samples, before eval
