"""medtune export: Ollama TEMPLATE equals the tokenizer's template; GGUF export, metadata and parity
(llama.cpp through the medtune[gguf] extra) on tiny random models; the llama.cpp chat/serve backend."""

from __future__ import annotations

import copy
import json
import re

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
