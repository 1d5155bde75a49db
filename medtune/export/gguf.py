"""HF safetensors -> GGUF with llama.cpp's own converter, then llama.cpp's own quantizer.

Where the converter comes from: llama.cpp's ``convert_hf_to_gguf.py`` (with its ``conversion/``
package and the ``gguf-py`` of the same commit) ships in llama-cpp-python's *source* distribution,
not in its wheel, and the ``gguf`` release on PyPI holds the GGUF reader/writer and small scripts
(dump, set metadata) but not the converter. medtune takes the converter from the sdist of the
*installed* llama-cpp-python version, so the converter, the file it writes and the llama.cpp that
quantizes and runs that file are one commit:

1. ``$MEDTUNE_LLAMA_CPP``: a llama.cpp source tree or a llama-cpp-python sdist ``.tar.gz``
   (offline machines: ``pip download --no-deps --no-binary :all: llama-cpp-python==<version>``
   elsewhere and copy the file);
2. the cache ``$MEDTUNE_HOME/llama.cpp/<version>/`` (filled once by 1 or 3);
3. otherwise that ``pip download`` from PyPI (~77 MB, about a minute, once); only the converter,
   ``conversion/``, ``gguf-py/`` and the licence are kept (~2 MB).

The converter runs in a child process with the ``gguf-py`` beside it (its own default), so a
converter is never paired with an older ``gguf`` release (0.19.0 on PyPI lags the converter's
constants); medtune's ``gguf`` dependency is used to read the result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from medtune.errors import ExportError
from medtune.llamacpp import llama_cpp_version
from medtune.models import medtune_home

KEEP = ("convert_hf_to_gguf.py", "LICENSE", "conversion/", "gguf-py/")
# Runs the converter; with MEDTUNE_TOKENIZER_PRE set, that llama.cpp pre-tokenizer name is used for a
# BPE tokenizer the converter's hash table does not know (instead of its NotImplementedError).
LAUNCHER = """
import os, runpy, sys
tree = sys.argv.pop(1)
sys.path[:0] = [tree, os.path.join(tree, "gguf-py")]
pre = os.environ.get("MEDTUNE_TOKENIZER_PRE")
if pre:
    from conversion import base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv[0] = os.path.join(tree, "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _extract(sdist: Path, dest: Path) -> Path:
    """Unpack the converter files of a llama-cpp-python sdist into ``dest`` (atomically)."""
    tmp = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=dest.parent))
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name.split("/vendor/llama.cpp/", 1)[-1] if "/vendor/llama.cpp/" in m.name else None
            if rel and (rel in KEEP or rel.startswith(KEEP[2:])) and "__pycache__" not in rel:
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    if not (tmp / "convert_hf_to_gguf.py").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py (not a llama-cpp-python sdist?)")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _download_sdist(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(into),
           f"llama-cpp-python=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise ExportError(
            f"llama.cpp's converter ships in the llama-cpp-python {version} source distribution, which could not be "
            f"downloaded ({(done.stderr or done.stdout).strip()[-300:]}). On a machine with PyPI run\n"
            f"  pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d DIR\n"
            f"copy DIR/llama_cpp_python-{version}.tar.gz here and set MEDTUNE_LLAMA_CPP=<that file>.")
    return found[0]


def converter_tree() -> Path:
    """A directory holding llama.cpp's ``convert_hf_to_gguf.py`` matching the installed bindings (see module doc).

    Raises:
        ExportError: no source given, none cached, and the sdist cannot be downloaded.
        ModelError: llama-cpp-python is not installed (install hint).
    """
    given = os.environ.get("MEDTUNE_LLAMA_CPP")
    if given and Path(given).is_dir():
        if not (Path(given) / "convert_hf_to_gguf.py").is_file():
            raise ExportError(f"MEDTUNE_LLAMA_CPP={given}: no convert_hf_to_gguf.py there (want a llama.cpp source tree)")
        return Path(given)
    version = llama_cpp_version()
    cache = medtune_home() / "llama.cpp" / version
    if (cache / "convert_hf_to_gguf.py").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    if given:
        if not Path(given).is_file():
            raise ExportError(f"MEDTUNE_LLAMA_CPP={given}: no such file or directory")
        return _extract(Path(given), cache)
    with tempfile.TemporaryDirectory() as tmp:
        return _extract(_download_sdist(version, Path(tmp)), cache)


def convert_to_gguf(model_dir: Path, out_file: Path, tokenizer_pre: str | None = None) -> Path:
    """Convert a transformers model directory to an f16 GGUF with llama.cpp's converter.

    The converter writes the tokenizer, the chat template (``tokenizer.chat_template``) and the
    special tokens (EOS, padding ...) from the directory's tokenizer files into the metadata.

    Raises:
        ExportError: the converter failed; the message has its last lines and, for an unrecognised
            BPE pre-tokenizer, what to set.
    """
    tree = converter_tree()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"MEDTUNE_TOKENIZER_PRE": tokenizer_pre} if tokenizer_pre else {})}
    cmd = [sys.executable, "-c", LAUNCHER, str(tree), str(model_dir), "--outfile", str(out_file), "--outtype", "f16"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode == 0 and out_file.is_file():
        return out_file
    log = (done.stdout + done.stderr).strip()
    hint = ""
    if "pre-tokenizer was not recognized" in log:
        hint = ("\nllama.cpp's converter does not know this BPE tokenizer's pre-tokenizer. If it is a plain GPT-2 "
                "byte-level BPE set export.tokenizer_pre=gpt-2 (--tokenizer-pre gpt-2); otherwise the llama.cpp "
                "name of the model family it comes from (llama-bpe, qwen2, ...).")
    elif "No module named 'sentencepiece'" in log:
        hint = "\nThe converter needs sentencepiece: pip install 'medtune[gguf]'."
    raise ExportError(f"llama.cpp's converter failed on {model_dir}:\n{log[-1500:]}{hint}")


def gguf_metadata(path: Path) -> dict:
    """Chat template and special token ids stored in a GGUF file (read with the ``gguf`` package).

    Returns:
        ``{"architecture", "chat_template", "eos_token_id", "eot_token_id", "bos_token_id", "file_type"}``
        (None for absent keys).
    """
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    keys = {"architecture": "general.architecture", "chat_template": "tokenizer.chat_template",
            "eos_token_id": "tokenizer.ggml.eos_token_id", "eot_token_id": "tokenizer.ggml.eot_token_id",
            "bos_token_id": "tokenizer.ggml.bos_token_id", "file_type": "general.file_type"}
    return {name: fields[key].contents() if key in fields else None for name, key in keys.items()}
