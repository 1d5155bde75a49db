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


def _reference(base, adapter, report: dict) -> list[list[int]]:
    """transformers' greedy tokens (float32) for the parity prompts of ``report``, base with ``adapter`` attached."""
    import torch

    from medtune.export.parity import hf_reference
    from medtune.models import load_model, load_tokenizer

    model = load_model(str(base), adapter=adapter, dtype=torch.float32).eval()
    ref = hf_reference(model, load_tokenizer(str(base)), report["prompts"], report["system_prompt"], report["n_tokens"])
    return [r["tokens"] for r in ref]


def _gguf_greedy(path, n=16) -> str:
    from medtune.config import GenerationSettings
    from medtune.generation import chat_once
    from medtune.models import load_chat_model

    model, tok = load_chat_model(str(path), backend="llamacpp")
    return chat_once(model, tok, [{"role": "user", "content": PROMPTS[0]}], GenerationSettings(max_new_tokens=n))


@pytest.mark.slow
def test_export_base_plus_adapter_merges_before_converting(qwen_dir, tiny_gguf, tmp_path):
    """``medtune export BASE --adapter DIR``: the adapter is merged (merge stage, with its parity check), the
    merged model converted; the f16 GGUF reproduces base+adapter exactly, not the base."""
    pytest.importorskip("llama_cpp", reason="needs the gguf extra: pip install 'medtune[gguf]'")
    from servekit import make_adapter
    from typer.testing import CliRunner

    from medtune.cli import app

    adapter = make_adapter(qwen_dir, tmp_path / "lora")
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(qwen_dir), "--adapter", str(adapter), "--format", "gguf", "--quant",
                                      "f16", "--tokenizer-pre", "gpt-2", "--output-dir", str(out), "--prompts", PROMPTS[0]])
    assert result.exit_code == 0, result.output
    assert (out / "merged-hf" / "model.safetensors").is_file() and not (out / "Modelfile").exists()
    report = json.loads((out / "parity.json").read_text())
    assert report["levels"]["f16"]["exact"] and report["levels"]["f16"]["greedy_match"] == report["levels"]["f16"]["tokens"]
    # the parity reference (transformers on the merged model) is base + adapter, unmerged, and not the base
    assert report["reference_tokens"] == _reference(qwen_dir, adapter, report) != _reference(qwen_dir, None, report)
    gguf = json.loads((out / "medtune_export.json").read_text())["files"]["f16"]
    assert _gguf_greedy(gguf) != _gguf_greedy(tiny_gguf)


@pytest.mark.parametrize("command", [["export", "{model}", "--format", "gguf"],
                                     ["export", "{model}", "--format", "ollama", "--quant", "q8_0"],
                                     ["chat", "--backend", "llamacpp", "--model", "{gguf}", "--prompt", "hi"],
                                     ["serve", "--backend", "llamacpp", "--model", "{gguf}"],
                                     ["web", "--backend", "llamacpp", "--model", "{gguf}"]],
                         ids=["export-gguf", "export-ollama", "chat", "serve", "web"])
def test_missing_llama_cpp_gives_the_install_hint_on_the_cli(monkeypatch, tmp_path, qwen_dir, command):
    """Without llama-cpp-python every command that needs it stops with ``pip install 'medtune[gguf]'``
    before any work (nothing written for export)."""
    import sys

    from typer.testing import CliRunner

    from medtune.cli import app

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError, as when not installed
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    args = [a.format(model=qwen_dir, gguf=tmp_path / "m.gguf") for a in command] + (
        ["--output-dir", str(tmp_path / "out")] if command[0] == "export" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "pip install 'medtune[gguf]'" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()


def test_export_with_adapter_checks_for_llama_cpp_before_merging(monkeypatch, tmp_path, qwen_dir):
    import sys

    from servekit import make_adapter
    from typer.testing import CliRunner

    from medtune.cli import app

    adapter = make_adapter(qwen_dir, tmp_path / "lora")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    result = CliRunner().invoke(app, ["export", str(qwen_dir), "--adapter", str(adapter), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code != 0 and "pip install 'medtune[gguf]'" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out" / "merged-hf").exists()  # failed before the (slow) merge


def test_cli_chat_serve_and_web_run_a_gguf_with_llamacpp(tiny_gguf, monkeypatch):
    """``medtune chat|serve|web --backend llamacpp --model file.gguf`` parse into a llama.cpp model and give
    the same greedy answer (uvicorn's and gradio's blocking launches are replaced by in-process calls)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("gradio")
    import uvicorn
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    import medtune.web
    from medtune.cli import app
    from medtune.config import GenerationSettings, SafetyConfig
    from medtune.llamacpp import LlamaCppModel
    from medtune.web import reply_stream

    question, n = "What is hypertension?", 12
    common = ["--backend", "llamacpp", "--model", str(tiny_gguf), "--max-new-tokens", str(n)]
    said = CliRunner().invoke(app, ["chat", *common, "--prompt", question])
    assert said.exit_code == 0, said.output

    served = {}

    def fake_uvicorn(api, **kw):
        with TestClient(api) as http:
            r = http.post("/v1/chat/completions", json={"model": str(tiny_gguf), "max_tokens": n,
                                                        "messages": [{"role": "user", "content": question}]})
        served.update(status=r.status_code, text=r.json()["choices"][0]["message"]["content"], port=kw["port"])

    monkeypatch.setattr(uvicorn, "run", fake_uvicorn)
    result = CliRunner().invoke(app, ["serve", *common, "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert "backend llamacpp" in " ".join(result.output.split())
    assert served["status"] == 200 and served["port"] == 8123

    web = {}
    monkeypatch.setattr(medtune.web, "build_ui", lambda cfg, backend: web.update(cfg=cfg, backend=backend) or _NoUI())
    result = CliRunner().invoke(app, ["web", *common, "--port", "8124"])
    assert result.exit_code == 0, result.output
    assert web["cfg"].backend == "llamacpp" and web["cfg"].port == 8124
    assert isinstance(web["backend"].__closure__[0].cell_contents, LlamaCppModel)
    shown = "".join(reply_stream([{"role": "user", "content": question}], GenerationSettings(max_new_tokens=n),
                                 SafetyConfig(), web["backend"]))
    assert said.output.strip() == served["text"].strip() == shown.strip() and shown.strip()


class _NoUI:
    """Stands in for the gradio page in CLI tests: ``queue`` and ``launch`` do nothing."""

    def queue(self, **kw):
        return self

    def launch(self, **kw):
        return self


@pytest.mark.parametrize("content", [b"", b"GGUF", b"GGUF\x03\x00\x00\x00" + bytes(16)], ids=["empty", "magic-only", "no-tensors"])
def test_llamacpp_backend_names_a_broken_gguf(tmp_path, content):
    pytest.importorskip("llama_cpp", reason="needs the gguf extra: pip install 'medtune[gguf]'")
    from medtune.errors import ModelError
    from medtune.models import load_chat_model

    (tmp_path / "broken.gguf").write_bytes(content)
    with pytest.raises(ModelError, match=r"llama\.cpp cannot load \S*broken\.gguf: "):
        load_chat_model(str(tmp_path / "broken.gguf"), backend="llamacpp")


def test_llamacpp_context_is_capped_at_the_trained_length(tiny_gguf, qwen_dir):
    from transformers import AutoConfig

    from medtune.llamacpp import load_gguf, trained_context

    trained = AutoConfig.from_pretrained(qwen_dir).max_position_embeddings
    assert trained_context(tiny_gguf) == trained < 4096
    assert load_gguf(tiny_gguf, n_ctx=4096).n_ctx() == trained > load_gguf(tiny_gguf, n_ctx=128).n_ctx()


def test_parity_reference_is_plain_greedy_whatever_the_models_sampling_defaults(qwen_dir):
    """A model whose generation_config carries a repetition penalty (as Qwen2.5's does) must still be
    compared with llama.cpp on plain greedy tokens: each reference token is the argmax of the logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from medtune.export.parity import hf_reference
    from medtune.generation import render_prompt
    from medtune.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(qwen_dir).eval()
    model.generation_config.repetition_penalty = 0.05  # < 1 favours seen tokens: greedy would change
    tok = load_tokenizer(str(qwen_dir))
    ref = hf_reference(model, tok, ["What is gout?"], None, 12)[0]
    ids = torch.tensor([ref["prompt_ids"]])
    with torch.no_grad():
        for t in ref["tokens"]:
            assert model(ids).logits[0, -1].argmax().item() == t
            ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
    assert render_prompt(tok, [{"role": "user", "content": "What is gout?"}])[0].tolist() == ref["prompt_ids"]


def test_quantize_applies_tensor_type_overrides(exported, tmp_path):
    """``tensor_types`` reaches llama.cpp's quantizer: the named tensors get the asked type, the rest its mixture."""
    from gguf import GGUFReader

    from medtune.llamacpp import quantize

    f16 = Path(json.loads((exported / "medtune_export.json").read_text())["files"]["f16"])
    out = quantize(f16, tmp_path / "over.gguf", "q8_0", tensor_types={r"ffn_up\.weight": "f16"})
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    assert {v for k, v in types.items() if k.endswith("ffn_up.weight")} == {"F16"}
    assert {v for k, v in types.items() if k.endswith("ffn_down.weight")} == {"Q8_0"}
