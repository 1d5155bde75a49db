"""CPU packed-SFT throughput side by side: medtune's default (packed) path vs LLaMA-Factory 0.9.5's neat packing.

Both arms fine-tune the same local model directory (default: the ``qwen2.5-coder-0.5b-instruct``
offline pack) on the same records (default: the quickstart's ``runs/quickstart/data/train.jsonl``
and ``validation.jsonl``, converted here to LLaMA-Factory's ShareGPT format) with the same
hyperparameters: LoRA r 8 / alpha 16 / dropout 0.05 on all linear layers, lr 3e-4 cosine with 5%
warm-up, max length 512, batch 1, bf16 autocast over fp32 weights, seed 42, gradient checkpointing
off, SDPA attention, a fixed number of optimizer steps.

- ``medtune``: ``medtune.train.sft.build_trainer`` with its defaults, packing on (trl's
  best-fit-decreasing packer, padding-free rows with per-example position ids).
- ``llamafactory``: ``llamafactory.train.tuner.run_exp`` with ``packing`` and ``neat_packing``
  (greedy knapsack rows right-padded to 513 tokens, 4-D block-diagonal float mask built by its
  collator), installed by this script in its own virtualenv with medtune's torch build.

Arms run as separate processes, interleaved (pair i runs medtune first when i is even, LLaMA-Factory
first when odd). Per arm: non-padding trained tokens and answer tokens in the fixed steps, loop wall
seconds and tokens/s, loop CPU seconds (``time.process_time`` around ``train()``), whole-process CPU
seconds and peak RSS (``os.wait4`` rusage of the arm's process), first/final training loss, each tool's
own ``evaluate()`` loss, and the held-out loss both arms are compared on: :func:`heldout_loss` of the
arm's saved adapter (one code path for both; the tools' own figures pack and weigh the validation set
differently). Pair i trains both arms with seed ``--seeds[i]`` (42, 43, 44), so three pairs are three seeds
and the per-arm medians compare the tools, not one seed's luck. Same-tokens check: each arm's packed training set is cut back into its examples
(at position-id restarts) and the multisets of ``(input_ids, labels)`` are compared by digest.

Run (machine otherwise idle; see docs/benchmarks.md for the figures):
    python bench/vs_llamafactory.py --pairs 3 --steps 36
With one core kept busy by a synthetic load (a busy-loop process pinned to the last CPU with
``os.sched_setaffinity``, running for the whole benchmark, the same for both arms):
    python bench/vs_llamafactory.py --pairs 3 --steps 36 --background-load 1
Smoke (checks the harness, ~10 min on 2 busy cores): ``python bench/vs_llamafactory.py --pairs 1 --steps 3``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LF_VERSION = "0.9.5"
# LLaMA-Factory requirements left out of its venv: UI, API server, model-hub clients and the
# multimodal decoders; none is imported by text SFT (torch is installed first, pinned to medtune's).
LF_SKIP = {"torch", "torchaudio", "torchvision", "av", "gradio", "modelscope", "hf-transfer", "fastapi",
           "sse-starlette", "uvicorn", "matplotlib"}
# LLaMA-Factory's mm_plugin imports torchaudio at module level; PyPI has no torchaudio for every
# torch build (none for 2.13), so its venv gets this stub: text SFT never calls it.
TORCHAUDIO_STUB = '"""Stub installed by medtune bench/vs_llamafactory.py: text SFT never uses torchaudio."""\n'


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                   check=True)


def ensure_lf_venv(venv: Path) -> Path:
    """Create ``venv`` with ``llamafactory==0.9.5`` on this interpreter's torch build (CPU: no CUDA wheels).

    Steps: ``python -m venv``; ``pip install torch==<this torch's version>`` (a local wheel via pip's
    find-links here); ``llamafactory`` with ``--no-deps``; its requirements minus :data:`LF_SKIP`
    with a constraints file pinning torch; a torchaudio stub when no matching torchaudio exists.

    Returns:
        The venv's python.

    Raises:
        RuntimeError: an ``nvidia-*`` package (a CUDA torch build) ended up in the venv.
    """
    import torch

    python = venv / "bin" / "python"
    if (venv / ".medtune-ready").is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={torch.__version__}\n")
    _pip(venv, "-c", str(constraints), f"torch=={torch.__version__}")
    _pip(venv, "--no-deps", f"llamafactory=={LF_VERSION}")
    probe = "import importlib.metadata as m; print('\\n'.join(m.requires('llamafactory')))"
    reqs = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout.split("\n")
    keep = [r for r in reqs if r and "extra ==" not in r and _req_name(r) not in LF_SKIP]
    _pip(venv, "-c", str(constraints), *keep)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    if subprocess.run([str(python), "-c", "import torchaudio"], check=False, capture_output=True).returncode != 0:
        (Path(site) / "torchaudio").mkdir(exist_ok=True)
        (Path(site) / "torchaudio" / "__init__.py").write_text(TORCHAUDIO_STUB)
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], check=True,
                             capture_output=True, text=True).stdout
    if any(line.lower().startswith("nvidia") for line in listing.split("\n")):
        raise RuntimeError(f"{venv}: a CUDA torch build was installed (nvidia-* packages); remove the venv and retry")
    (venv / ".medtune-ready").write_text(listing)
    return python


def _req_name(req: str) -> str:
    import re

    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


# ---------------------------------------------------------------------------------------------
# Shared by both arms (stdlib and torch only: this part runs in either virtualenv).

HPARAMS = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "learning_rate": 3e-4, "lr_scheduler": "cosine",
           "warmup_ratio": 0.05, "max_length": 512, "batch_size": 1, "seed": 42}


def split_examples(input_ids: list[int], labels: list[int], position_ids: list[int], real: list[bool]):
    """Cut one packed row back into its examples at position-id restarts, padding dropped.

    Args:
        input_ids, labels, position_ids: the row, ``(tokens,)`` each; labels -100 outside answers.
        real: ``(tokens,)``, False on padding.

    Returns:
        ``[(input_ids, labels)]`` per example, as tuples. The first label of each example is set to
        -100: trl's padding-free collator does the same (that token is a prompt token in both tools).
    """
    out, cur_ids, cur_lab = [], [], []
    for tok, lab, pos, keep in zip(input_ids, labels, position_ids, real):
        if not keep:
            continue
        if pos == 0 and cur_ids:
            out.append((tuple(cur_ids), tuple(cur_lab)))
            cur_ids, cur_lab = [], []
        cur_ids.append(tok)
        cur_lab.append(-100 if pos == 0 else lab)
    if cur_ids:
        out.append((tuple(cur_ids), tuple(cur_lab)))
    return out


def dataset_digest(examples: list[tuple]) -> dict:
    """Order-free digest of a multiset of ``(input_ids, labels)`` examples, with counts."""
    import hashlib

    h = hashlib.sha256()
    for ids, lab in sorted(examples):
        h.update(json.dumps([ids, lab]).encode())
    return {"examples": len(examples), "tokens": sum(len(i) for i, _ in examples),
            "label_tokens": sum(sum(x != -100 for x in lab) for _, lab in examples), "sha256": h.hexdigest()[:16]}


class StepMeter:
    """Counts what each optimizer step trains: non-padding tokens and answer (label) tokens."""

    def __init__(self):
        self.tokens, self.label_tokens, self.steps = 0, 0, 0

    def add(self, inputs: dict) -> None:
        labels, mask = inputs["labels"], inputs.get("attention_mask")
        if mask is None:  # padding-free row; medtune pads it on CPU with a tail of one-token sequences (position 0)
            pos = inputs.get("position_ids")
            nonzero = (pos[0] != 0).nonzero() if pos is not None else []
            real = int(nonzero[-1]) + 1 if len(nonzero) else labels.numel()
        elif mask.dim() == 4:  # LLaMA-Factory's additive block-diagonal mask: padding rows attend to nothing
            real = int((mask[:, 0].diagonal(dim1=-2, dim2=-1) == 0).sum())
        else:
            real = int((mask != 0).sum())
        self.tokens += real
        self.label_tokens += int((labels[..., 1:] != -100).sum())
        self.steps += 1


def profiled(trainer, steps: int, out: Path):
    """Profile (torch.profiler, CPU) ``steps`` training steps after the first; the op table goes to ``out``."""
    import torch
    from transformers import TrainerCallback

    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                  schedule=torch.profiler.schedule(wait=1, warmup=0, active=steps, repeat=1))

    class Step(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            prof.start()

        def on_step_end(self, *args, **kwargs):
            prof.step()

        def on_train_end(self, *args, **kwargs):
            prof.stop()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=60, max_name_column_width=70)
            out.write_text(table)

    trainer.add_callback(Step())


def timed_train(trainer, meter: StepMeter, profile: dict | None = None, **train_kwargs) -> tuple[dict, object]:
    """Run ``trainer.train()`` with ``meter`` counting each training batch.

    Args:
        profile: ``{"steps": k, "out": path}`` to profile k steps after the first (slows those steps).

    Returns:
        ``(figures, train_output)``: figures hold the loop's wall and CPU seconds, steps, tokens,
        answer tokens, non-padding tokens/s and the logged losses.
    """
    compute_loss = trainer.compute_loss

    def counting(model, inputs, *args, **kwargs):
        if model.training:
            meter.add(inputs)
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = counting
    if profile and profile.get("steps"):
        profiled(trainer, profile["steps"], Path(profile["out"]))
    t0, c0 = time.perf_counter(), time.process_time()
    output = trainer.train(**train_kwargs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    trainer.compute_loss = compute_loss
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"loop_wall_s": wall, "loop_cpu_s": cpu, "steps": meter.steps, "tokens": meter.tokens,
            "label_tokens": meter.label_tokens, "tokens_per_s": meter.tokens / wall, "losses": losses}, output


def medtune_arm(spec: dict) -> dict:
    """medtune's default SFT path (packing on) through ``build_trainer``; returns the arm's figures."""
    from medtune.config import TrainConfig
    from medtune.train.sft import build_trainer

    hp = {**HPARAMS, "seed": spec.get("seed", HPARAMS["seed"])}
    cfg = TrainConfig(model=spec["model"], train_file=Path(spec["train"]), validation_file=Path(spec["validation"]),
                      output_dir=Path(spec["out"]), max_steps=spec["steps"], method="lora", lora_r=hp["lora_r"],
                      lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"], target_modules="all-linear",
                      learning_rate=hp["learning_rate"], lr_scheduler_type=hp["lr_scheduler"],
                      warmup_ratio=hp["warmup_ratio"], per_device_train_batch_size=hp["batch_size"],
                      per_device_eval_batch_size=hp["batch_size"], max_seq_length=hp["max_length"], bf16=True,
                      gradient_checkpointing=False, save_steps=10**6, seed=hp["seed"])
    trainer, _, _ = build_trainer(cfg)
    rows, examples = trainer.train_dataset, []
    for row in rows:
        pos = [p for n in row["seq_lengths"] for p in range(n)] if "seq_lengths" in row else list(range(len(row["input_ids"])))
        examples += split_examples(row["input_ids"], row["labels"], pos, [True] * len(pos))
    result, _ = timed_train(trainer, StepMeter(), spec.get("profile"))
    result["eval_loss"] = trainer.evaluate()["eval_loss"]
    trainer.save_model(str(Path(spec["out"]) / "adapter"))
    result["adapter"] = str(Path(spec["out"]) / "adapter")
    return {**result, "rows": len(rows), "data": dataset_digest(examples), "speed": trainer.medtune_speed}


def lf_dataset(spec: dict) -> Path:
    """``spec``'s train/validation JSONL as LLaMA-Factory ShareGPT files with a ``dataset_info.json``."""
    d = Path(spec["out"]) / "lf_data"
    d.mkdir(parents=True, exist_ok=True)
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}
    info = {}
    for name in ("train", "validation"):
        lines = Path(spec[name]).read_text(encoding="utf-8").splitlines()
        rows = [{"messages": json.loads(line)["messages"]} for line in lines if line.strip()]
        (d / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        info[f"medtune_{name}"] = {"file_name": f"{name}.json", "formatting": "sharegpt",
                                   "columns": {"messages": "messages"}, "tags": tags}
    (d / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return d


def lf_arm(spec: dict) -> dict:
    """LLaMA-Factory's SFT with neat packing through ``run_exp``; returns the arm's figures."""
    from llamafactory.train.sft import trainer as lf_trainer
    from llamafactory.train.tuner import run_exp

    hp, box = {**HPARAMS, "seed": spec.get("seed", HPARAMS["seed"])}, {}
    cls = lf_trainer.CustomSeq2SeqTrainer
    train, evaluate = cls.train, cls.evaluate

    def timed(self, *args, **kwargs):
        cls.train = train  # the wrapped call below runs the real train()
        rows, examples = self.train_dataset, []
        for row in rows:
            real = [m != 0 for m in row["attention_mask"]]
            examples += split_examples(row["input_ids"], row["labels"], row["position_ids"], real)
        figures, output = timed_train(self, StepMeter(), spec.get("profile"), **kwargs)
        box.update(figures, rows=len(rows), data=dataset_digest(examples))
        return output

    def eval_loss(self, *args, **kwargs):
        metrics = evaluate(self, *args, **kwargs)
        box["eval_loss"] = metrics.get("eval_loss")
        return metrics

    cls.train, cls.evaluate = timed, eval_loss
    run_exp(args=dict(  # noqa: C408  (LLaMA-Factory's argument names, as in its YAML files)
        stage="sft", do_train=True, do_eval=True, model_name_or_path=spec["model"], finetuning_type="lora",
        lora_rank=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"], lora_target="all",
        dataset="medtune_train", eval_dataset="medtune_validation", dataset_dir=str(lf_dataset(spec)), template="qwen",
        cutoff_len=hp["max_length"], packing=True, neat_packing=True, overwrite_cache=True,
        output_dir=str(Path(spec["out"]) / "lf_out"), overwrite_output_dir=True,
        per_device_train_batch_size=hp["batch_size"], per_device_eval_batch_size=hp["batch_size"],
        gradient_accumulation_steps=1, learning_rate=hp["learning_rate"], lr_scheduler_type=hp["lr_scheduler"],
        warmup_ratio=hp["warmup_ratio"], max_steps=spec["steps"], bf16=True, seed=hp["seed"], logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, disable_gradient_checkpointing=True, flash_attn="sdpa", plot_loss=False,
    ))
    box["adapter"] = str(Path(spec["out"]) / "lf_out")  # run_exp saves the adapter there after training
    return box


def heldout_loss(model: str, adapter: str | None, validation: Path) -> dict:
    """One held-out measure for both arms: the base in fp32 plus the arm's saved LoRA adapter, each
    validation conversation unpacked (batch 1, the model's own chat template), cross-entropy summed over
    the last assistant turn's tokens (its end-of-turn tokens included) and divided by their count.

    Each tool's own ``evaluate()`` packs the validation set its own way and averages per packed row, so
    the two ``eval_loss`` figures weigh tokens differently; this one weighs every answer token once.

    Returns:
        ``{"loss": token-weighted mean (nats), "example_mean": mean of per-conversation means,
        "examples", "tokens"}``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    net.eval()
    total, count, per = 0.0, 0, []
    for line in validation.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(messages, tokenize=False)
        p_ids, ids = tok(prompt)["input_ids"], tok(full)["input_ids"]
        if ids[:len(p_ids)] != p_ids:
            raise ValueError(f"{validation}: the prompt's tokens are not a prefix of the conversation's")
        with torch.no_grad():
            logits = net(torch.tensor([ids])).logits[0, len(p_ids) - 1:-1]
        ce = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids[len(p_ids):]), reduction="sum").item()
        total, count = total + ce, count + len(ids) - len(p_ids)
        per.append(ce / (len(ids) - len(p_ids)))
    return {"loss": total / count, "example_mean": sum(per) / len(per), "examples": len(per), "tokens": count}


def arm_main(kind: str, spec_path: Path) -> None:
    """Child-process entry: run one arm and write its figures next to the spec."""
    spec = json.loads(spec_path.read_text())
    result = medtune_arm(spec) if kind == "medtune" else lf_arm(spec)
    import torch

    result["torch"], result["threads"] = torch.__version__, torch.get_num_threads()
    Path(spec["result"]).write_text(json.dumps(result, indent=2, default=str))


# ---------------------------------------------------------------------------------------------
# Driver (medtune's virtualenv).

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="interleaved (medtune, LLaMA-Factory) pairs")
    p.add_argument("--steps", type=int, default=36, help="optimizer steps per arm (batch 1: packed rows)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44],
                   help="seed of pair i: seeds[i %% len(seeds)] (LoRA init and row order; the same for both arms of a pair)")
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="offline pack name or model directory")
    p.add_argument("--train", type=Path, default=ROOT / "runs" / "quickstart" / "data" / "train.jsonl")
    p.add_argument("--validation", type=Path, default=ROOT / "runs" / "quickstart" / "data" / "validation.jsonl")
    p.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "medtune" / "bench" / f"llamafactory-{LF_VERSION}",
                   help="LLaMA-Factory's virtualenv (created on first use)")
    p.add_argument("--workdir", type=Path, default=None, help="arm outputs and logs (default: a temp dir)")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "bench" / "vs_llamafactory.json")
    p.add_argument("--background-load", type=int, default=0, metavar="CORES",
                   help="keep this many CPUs busy with a pinned busy-loop process while both arms run (shared machine)")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="profile this many steps after the first in each arm (torch.profiler op tables in --workdir; "
                        "slows the arm, so timings of a profiled run are not figures)")
    return p.parse_args(argv)


BUSY_LOOP = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


@contextlib.contextmanager
def background_load(cores: int):
    """Keep ``cores`` CPUs busy for the duration: one busy-loop process pinned to each of the last ``cores``
    CPUs this process may use. Yields the pinned CPU ids; the processes are killed (by pid) on exit."""
    cpus = sorted(os.sched_getaffinity(0))[-cores:] if cores else []
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpu)]) for cpu in cpus]
    try:
        deadline = time.time() + 30
        while any(os.sched_getaffinity(p.pid) != {cpu} for p, cpu in zip(procs, cpus)) and time.time() < deadline:
            time.sleep(0.05)  # wait until each loop is pinned, so an arm never samples the cores before the load runs
        yield cpus
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run_arm(kind: str, python: Path, spec: dict, workdir: Path) -> dict:
    """Run one arm in its own process; add its wall seconds, process CPU seconds and peak RSS (``os.wait4``)."""
    spec_path = workdir / f"{Path(spec['out']).name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    load = [round(x, 2) for x in os.getloadavg()]
    with open(workdir / f"{Path(spec['out']).name}.log", "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(python), __file__, "_arm", kind, str(spec_path)], stdout=log, stderr=log, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{kind} arm failed (wait status {status}); see {log.name}")
    result = json.loads(Path(spec["result"]).read_text())
    return {**result, "arm": kind, "loadavg_start": load, "process_wall_s": wall, "process_cpu_s": usage.ru_utime + usage.ru_stime,
            "process_user_s": usage.ru_utime, "process_sys_s": usage.ru_stime, "minor_page_faults": usage.ru_minflt,
            "peak_rss_gib": usage.ru_maxrss / 2**20}


def _median(values):
    import statistics

    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    """Per-arm medians, the per-pair tokens/s ratio medtune / LLaMA-Factory, and the same-data check."""
    arms = {}
    for kind in ("medtune", "llamafactory"):
        rs = [r for r in runs if r["arm"] == kind]
        arms[kind] = {k: _median([r.get(k) for r in rs]) for k in
                      ("tokens_per_s", "loop_wall_s", "loop_cpu_s", "process_cpu_s", "process_sys_s",
                       "minor_page_faults", "peak_rss_gib", "tokens",
                       "label_tokens", "eval_loss", "heldout_loss")}
        arms[kind]["heldout_loss_per_seed"] = {r["seed"]: round(r["heldout_loss"], 4) for r in rs}
        arms[kind]["first_loss"] = _median([r["losses"][0] for r in rs if r["losses"]])
        arms[kind]["final_loss"] = _median([r["losses"][-1] for r in rs if r["losses"]])
        arms[kind]["rows"], arms[kind]["data"] = rs[0]["rows"], rs[0]["data"]
    pairs = sorted({r["pair"] for r in runs})
    by = {(r["pair"], r["arm"]): r for r in runs}
    ratios = [by[p, "medtune"]["tokens_per_s"] / by[p, "llamafactory"]["tokens_per_s"] for p in pairs]
    cpu = [by[p, "medtune"]["loop_cpu_s"] / by[p, "medtune"]["tokens"]
           / (by[p, "llamafactory"]["loop_cpu_s"] / by[p, "llamafactory"]["tokens"]) for p in pairs]
    same = arms["medtune"]["data"] == arms["llamafactory"]["data"]
    gap = arms["medtune"]["heldout_loss"] - arms["llamafactory"]["heldout_loss"]
    return {"arms": arms, "heldout_loss_gap": gap, "tokens_per_s_ratio": ratios, "tokens_per_s_ratio_median": _median(ratios),
            "cpu_s_per_token_ratio": cpu, "same_training_examples": same}


def print_table(summary: dict) -> None:
    cols = [("tokens/s", "tokens_per_s", "{:.1f}"), ("loop wall s", "loop_wall_s", "{:.1f}"),
            ("loop CPU s", "loop_cpu_s", "{:.1f}"), ("process CPU s", "process_cpu_s", "{:.1f}"),
            ("of which sys s", "process_sys_s", "{:.1f}"), ("minor faults", "minor_page_faults", "{:.0f}"),
            ("peak RSS GiB", "peak_rss_gib", "{:.2f}"), ("tokens", "tokens", "{:.0f}"),
            ("answer tokens", "label_tokens", "{:.0f}"), ("first loss", "first_loss", "{:.4f}"),
            ("final loss", "final_loss", "{:.4f}"), ("own eval loss", "eval_loss", "{:.4f}"),
            ("held-out loss", "heldout_loss", "{:.4f}")]
    print("| arm (median) | " + " | ".join(c[0] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for kind, a in summary["arms"].items():
        cells = [fmt.format(a[key]) if a[key] is not None else "-" for _, key, fmt in cols]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print(f"\ntokens/s medtune / LLaMA-Factory per pair: {[round(r, 3) for r in summary['tokens_per_s_ratio']]}, "
          f"median {summary['tokens_per_s_ratio_median']:.3f}")
    print(f"loop CPU s per token medtune / LLaMA-Factory per pair: {[round(r, 3) for r in summary['cpu_s_per_token_ratio']]}")
    for kind, a in summary["arms"].items():
        print(f"{kind}: {a['rows']} packed rows; examples {a['data']}")
    print("same training examples (input_ids and labels):", summary["same_training_examples"])
    for kind, a in summary["arms"].items():
        print(f"{kind}: held-out loss per seed {a['heldout_loss_per_seed']}")
    print(f"held-out loss, median medtune - median LLaMA-Factory: {summary['heldout_loss_gap']:+.4f}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    from medtune.models import resolve_model

    model = str(Path(resolve_model(args.model)).resolve())
    for f in (args.train, args.validation):
        if not f.is_file():
            raise SystemExit(f"{f}: not found; build the quickstart data first "
                             "(medtune run recipes/quickstart.yaml) or pass --train/--validation")
    lf_python = ensure_lf_venv(args.venv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vs_lf_"))
    workdir.mkdir(parents=True, exist_ok=True)
    with background_load(args.background_load) as loaded:
        if loaded:
            print(f"background load: busy loops pinned to CPU {loaded}", flush=True)
        runs = run_pairs(args, model, lf_python, workdir)
    summary = summarize(runs)
    print_table(summary)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "model": model, "hparams": HPARAMS,
              "background_load_cpus": loaded, "loadavg_end": os.getloadavg(),
              "summary": summary, "runs": runs, "workdir": str(workdir)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.json}")
    return report


def run_pairs(args: argparse.Namespace, model: str, lf_python: Path, workdir: Path) -> list[dict]:
    """The interleaved arms: pair i runs medtune first when i is even, LLaMA-Factory first when odd."""
    runs = []
    for pair in range(args.pairs):
        order = ["medtune", "llamafactory"] if pair % 2 == 0 else ["llamafactory", "medtune"]
        for kind in order:
            out = workdir / f"pair{pair}-{kind}"
            spec = {"model": model, "train": str(args.train.resolve()), "validation": str(args.validation.resolve()),
                    "steps": args.steps, "out": str(out), "result": str(out) + ".result.json",
                    "seed": args.seeds[pair % len(args.seeds)],
                    "profile": {"steps": args.profile_steps, "out": str(out) + ".profile.txt"}}
            r = run_arm(kind, lf_python if kind == "llamafactory" else Path(sys.executable), spec, workdir)
            r["heldout"] = heldout_loss(model, r["adapter"], args.validation)
            r["heldout_loss"] = r["heldout"]["loss"]
            runs.append({**r, "pair": pair, "seed": spec["seed"]})
            print(f"pair {pair} {kind}: {r['tokens_per_s']:.1f} tokens/s, loop CPU {r['loop_cpu_s']:.0f} s, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB, {r['threads']} threads, load average {r['loadavg_start']}, "
                  f"seed {spec['seed']}, held-out loss {r['heldout_loss']:.4f} (own evaluate {r['eval_loss']:.4f}), "
                  f"losses {[round(x, 4) for x in r['losses']]}", flush=True)
    return runs


if __name__ == "__main__":
    if sys.argv[1:2] == ["_arm"]:
        arm_main(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
