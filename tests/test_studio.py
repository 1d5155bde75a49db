"""medtune studio, quick tier: safe by default (loopback unless --auth, login enforced, paths and uploads
confined to the work dir), the recipe form (edits read like --set, validation, only what was typed is
written), the jobs' supervisor and live log. The slow tier (test_studio_slow.py) trains, stops,
resumes and walks the page in a browser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medtune.cli import app
from medtune.errors import AccessError, ConfigError
from medtune.studio import forms, jobs
from medtune.studio.access import auth_check, check_bind, confine, plain_name, save_upload

QUICKSTART = Path(__file__).parent.parent / "recipes" / "quickstart.yaml"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "studio.example.org"])
def test_cli_refuses_a_non_loopback_host_without_auth(tmp_path, host):
    result = CliRunner().invoke(app, ["studio", "--host", host, "--workdir", str(tmp_path / "wd")])
    assert result.exit_code == 2, result.output
    assert f"refuses to listen on {host} without --auth" in result.output
    assert "--auth USER:PASSWORD" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "wd").exists()  # refused before anything was created


@pytest.mark.slow
def test_cli_starts_the_studio_on_loopback(tmp_path):
    """``medtune studio --port P --workdir DIR`` serves the page on 127.0.0.1 and creates the work dir."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("gradio")
    from servekit import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medtune", "studio", "--port", str(port), "--workdir",
                             str(tmp_path / "wd")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, status = time.time() + 180, None
        while time.time() < deadline and status != 200 and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
            except httpx.TransportError:
                time.sleep(1)
        assert status == 200, proc.stdout.read().decode() if proc.poll() is not None else status
        assert (tmp_path / "wd" / "recipes").is_dir() and (tmp_path / "wd" / "exports").is_dir()
    finally:
        proc.terminate()
        proc.wait(30)


def test_cli_refuses_an_unusable_auth(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# no user\n")
    for spec, message in (("alice", "expected USER:PASSWORD"), (str(empty), "has no USER:PASSWORD line")):
        result = CliRunner().invoke(app, ["studio", "--host", "0.0.0.0", "--auth", spec, "--workdir", str(tmp_path)])
        assert result.exit_code == 2 and message in result.output, result.output


def test_loopback_needs_no_auth_and_auth_checks_every_pair(tmp_path):
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        check_bind(host, None)
    with pytest.raises(AccessError):
        check_bind("0.0.0.0", "")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# team\nalice:s3cret\nbob:hunter2\nLONGTOKEN\n")
    check = auth_check(str(tokens))
    assert check("alice", "s3cret") and check("bob", "hunter2") and check("anyone", "LONGTOKEN")
    assert not check("alice", "hunter2") and not check("mallory", "s3cret") and not check("alice", "")
    assert auth_check("carol:a:b")("carol", "a:b")  # the password may hold a colon


def test_the_page_asks_for_a_login_when_auth_is_set(tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("gradio")
    from medtune.studio.app import launch_studio
    from medtune.studio.config import StudioConfig
    from servekit import free_port

    port = free_port()
    ui = launch_studio(StudioConfig(workdir=tmp_path / "wd", port=port, auth="alice:s3cret"), block=False)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/config").status_code == 401
        assert httpx.post(url + "/login", data={"username": "alice", "password": "wrong"}).status_code == 400
        with httpx.Client() as client:
            assert client.post(url + "/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
            assert client.get(url + "/config").status_code == 200
    finally:
        ui.close()


def test_paths_outside_the_work_dir_are_refused(tmp_path):
    wd, examples = tmp_path / "wd", tmp_path / "examples"
    (wd / "sub").mkdir(parents=True)
    examples.mkdir()
    (wd / "link").symlink_to(tmp_path)
    assert confine(wd / "sub" / "new.jsonl", wd) == (wd / "sub" / "new.jsonl").resolve()
    assert confine(examples / "qa.jsonl", wd, [examples]) == (examples / "qa.jsonl").resolve()
    for escape in (wd / ".." / "x", tmp_path / "x", "/etc/passwd", wd / "link" / "x", examples / "qa.jsonl"):
        with pytest.raises(AccessError, match="outside the studio's work dir"):
            confine(escape, wd)


def test_uploads_are_size_limited_and_land_in_the_work_dir_under_a_plain_name(tmp_path):
    src = tmp_path / "upload.bin"
    src.write_bytes(b"model: x\n" * 1000)
    saved = save_upload(src, tmp_path / "wd", max_mb=1, suffixes=(".yaml",), name="../../../etc/cron.d/evil recipe.yaml")
    assert saved == tmp_path / "wd" / "uploads" / "evil_recipe.yaml" and saved.read_bytes() == src.read_bytes()
    with pytest.raises(AccessError, match="over the studio's upload limit of 0.001 MiB"):
        save_upload(src, tmp_path / "wd", max_mb=0.001)
    with pytest.raises(AccessError, match="expected a file ending in .yaml"):
        save_upload(src, tmp_path / "wd", max_mb=1, suffixes=(".yaml",), name="run.sh")
    assert plain_name("..\\..\\a b.yml") == "a_b.yml"


def _field(path: str) -> forms.FormField:
    return next(f for f in forms.form_fields(path.split(".")[0] if "." in path else forms.SHARED) if f.path == path)


def test_the_form_covers_every_section_and_reads_text_like_set(tmp_path):
    assert forms.sections()[:3] == ["shared", "data", "pretrain"] and "eval" in forms.sections()
    kinds = {f.path: f.widget for f in forms.form_fields("train")}
    assert kinds["train.method"] == "choice" and kinds["train.packing"] == "check"
    assert kinds["train.max_steps"] == "number" and kinds["train.target_modules"] == "text"
    assert {f.path: f.widget for f in forms.form_fields("data")}["data.sources"] == "yaml"
    assert "data.teacher.max_tokens" in {f.path for f in forms.form_fields("data")}  # nested settings flattened
    assert _field("train.learning_rate").help.startswith("Peak learning rate")

    data, note = forms.open_recipe(QUICKSTART, tmp_path)
    assert data["output_dir"] == str(tmp_path / "quickstart") and "inside the work dir" in note
    edited = forms.apply_edit(data, _field("train.max_steps"), 2.0)
    edited = forms.apply_edit(edited, _field("train.target_modules"), "[q_proj, v_proj]")
    edited = forms.apply_edit(edited, _field("train.method"), "full")
    edited = forms.apply_edit(edited, _field("data.teacher.max_tokens"), 64)
    assert edited["train"]["max_steps"] == 2 and isinstance(edited["train"]["max_steps"], int)
    assert edited["train"]["target_modules"] == ["q_proj", "v_proj"] and edited["train"]["method"] == "full"
    assert edited["data"]["teacher"] == {"max_tokens": 64}
    assert forms.apply_edit(edited, _field("train.method"), "") ["train"].get("method") is None  # back to default
    assert forms.apply_edit(edited, _field("train.save_total_limit"), "") == edited  # an empty box passed through
    assert forms.apply_edit(edited, _field("train.max_steps"), 2) == edited  # what it already shows
    hints = forms.placeholders(edited, "train")  # what an empty box means: the resolved recipe's value
    assert hints["train.train_file"] == str(tmp_path / "quickstart" / "data" / "train.jsonl")
    assert hints["train.output_dir"] == str(tmp_path / "quickstart" / "adapter") and hints["train.save_total_limit"] == "2"
    assert forms.shown(_field("train.save_total_limit"), edited) == "" and forms.shown(_field("train.packing"), edited)
    assert data["train"]["max_steps"] == yaml.safe_load(QUICKSTART.read_text())["train"]["max_steps"] != 2  # the input mapping is never changed
    assert forms.problems(edited, tmp_path, [Path("examples")]) == []


def test_the_form_shows_validation_errors_by_key(tmp_path):
    data, _ = forms.open_recipe(QUICKSTART, tmp_path)
    bad = forms.apply_edit(data, _field("train.learning_rate"), -1)
    bad = forms.apply_edit(bad, _field("train.lr_scheduler_type"), "zigzag")
    found = forms.problems(bad, tmp_path, [Path("examples")])
    assert any("train.learning_rate: Input should be greater than 0" in p for p in found)
    with pytest.raises(ConfigError, match="data.sources: invalid YAML"):
        forms.apply_edit(data, _field("data.sources"), "- {path: [unclosed")
    sources = forms.apply_edit(data, _field("data.sources"), "- {path: examples/medical_qa.jsonl, type: corpus}\n")
    assert sources["data"]["sources"] == [{"path": "examples/medical_qa.jsonl", "type": "corpus"}]


def test_a_recipe_whose_paths_leave_the_work_dir_is_not_saved(tmp_path):
    wd = tmp_path / "wd"
    data, _ = forms.open_recipe(QUICKSTART, wd)
    for key, value in (("output_dir", "../elsewhere"), ("train.output_dir", str(tmp_path / "adapter")),
                       ("eval.fact_file", "/etc/passwd"), ("model", str(tmp_path))):
        bad = forms.apply_edit(data, _field(key), value)
        with pytest.raises(ConfigError, match=f"{key} .* is outside the studio's work dir"):
            forms.save_recipe(bad, "quick", wd, [Path("examples")])
    assert not (wd / forms.RECIPES / "quick.yaml").exists()
    path = forms.save_recipe(data, "../../quick", wd, [Path("examples")], origin="recipes/quickstart.yaml")
    assert path == wd / "recipes" / "quick.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Written by medtune studio") and yaml.safe_load(text) == data
    assert list(yaml.safe_load(text)) == ["model", "output_dir", "seed", "data", "train", "merge", "samples", "eval"]


def test_jobs_and_the_form_only_take_recipes_whose_paths_stay_in_the_work_dir(tmp_path):
    """What the page's requests can name: the form opens shipped or work-dir recipes only; jobs and chat run
    only recipes saved in <workdir>/recipes whose paths stay inside (checked again at every use)."""
    pytest.importorskip("gradio")
    from medtune.studio.app import open_for_form, recipe_path
    from medtune.studio.config import StudioConfig

    wd = tmp_path / "wd"
    cfg = StudioConfig(workdir=wd, recipes_dir=QUICKSTART.parent)
    with pytest.raises(AccessError, match="outside the studio's work dir"):
        open_for_form(cfg, "/etc/passwd")
    assert open_for_form(cfg, str(QUICKSTART))[0]["output_dir"] == str(wd / "quickstart")
    evil = wd / "uploads" / "evil.yaml"
    evil.parent.mkdir(parents=True)
    evil.write_text(f"output_dir: {tmp_path / 'elsewhere'}\ntrain: {{max_steps: 2}}\n")
    with pytest.raises(AccessError, match="outside the studio's work dir"):
        recipe_path(cfg, str(evil))  # an upload is not a saved recipe
    edited = forms.save_recipe({"output_dir": str(wd / "ok"), "train": {"max_steps": 2}}, "edited", wd, cfg.read_roots)
    assert recipe_path(cfg, str(edited)) == edited
    edited.write_text(evil.read_text())  # changed on disk after it was saved
    with pytest.raises(ConfigError, match="edited.yaml: output_dir .* is outside"):
        recipe_path(cfg, str(edited))
    with pytest.raises(ConfigError, match="no recipe chosen"):
        recipe_path(cfg, None)


def test_the_supervisor_outlives_a_stop_and_records_how_the_command_ended(tmp_path):
    status = tmp_path / "status.json"
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-m", "medtune.studio.supervise", str(status), "--", sys.executable,
                             "-c", code], start_new_session=True)
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGTERM)  # what the Stop button sends: the whole group
    assert proc.wait(30) == 0
    assert json.loads(status.read_text())["returncode"] == 75
    plain = tmp_path / "plain.json"
    subprocess.run([sys.executable, "-m", "medtune.studio.supervise", str(plain), "--", sys.executable, "-c", "exit(3)"],
                   check=True)
    assert json.loads(plain.read_text())["returncode"] == 3


def test_a_job_whose_section_is_missing_is_refused_before_it_starts(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\ntrain: {{max_steps: 2}}\n")
    for kind, section in (("data", "data"), ("eval", "eval"), ("index", "rag")):
        with pytest.raises(ConfigError, match=f"no `{section}:` section"):
            jobs.start_job(tmp_path, kind, recipe)
    assert not jobs.jobs_root(tmp_path).exists() and jobs.list_jobs(tmp_path) == []
    with pytest.raises(ConfigError, match="no job '../x'"):
        jobs.find_job(tmp_path, "../x")


def test_records_show_provenance_and_filter_by_language_and_generator(tmp_path):
    from medtune.studio import browse

    rows = [{"messages": [{"role": "user", "content": "What is hypertension?"}, {"role": "assistant", "content": "High BP."}],
             "meta": {"source_file": "g.pdf", "passage_id": "g.pdf#p3", "char_span": [10, 90], "page": 2, "page_end": 3,
                      "section": ["Hypertension", "Diagnosis"], "language": "en", "generator": "guideline-qa"}},
            {"instruction": "二甲双胍怎么吃？", "input": "", "output": "随餐服用。",
             "meta": {"source_file": "kb.jsonl", "field": "usage", "language": "zh", "generator": "kb-template"}}]
    (tmp_path / "train.jsonl").write_text(json.dumps(rows[0]) + "\n" + "{broken\n", encoding="utf-8")
    (tmp_path / "validation.jsonl").write_text(json.dumps(rows[1], ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "stats.json").write_text(json.dumps({"languages": {"en": 1, "zh": 1}, "generators": {"guideline-qa": 1, "kb-template": 1}}))
    shown, matched = browse.records(tmp_path)
    assert matched == 2 and shown[0] == ["train", "en", "guideline-qa", "g.pdf", "Hypertension › Diagnosis", "2-3",
                                         "What is hypertension?", "High BP."]
    assert shown[1][:6] == ["validation", "zh", "kb-template", "kb.jsonl", "field usage", ""] and shown[1][6] == "二甲双胍怎么吃？"
    assert browse.record_row("train", {"messages": [], "meta": {"passage_id": "a.md#p0", "char_span": [0, 9], "page": 4}})[4:6] \
        == ["a.md#p0 chars 0-9", "4"]
    assert browse.records(tmp_path, language="zh")[1] == 1 and browse.records(tmp_path, generator="guideline-qa")[1] == 1
    assert browse.records(tmp_path, text="METFORMIN")[1] == 0 and browse.records(tmp_path, text="hyperTENSION")[1] == 1
    assert browse.facets(tmp_path) == (["en", "zh"], ["guideline-qa", "kb-template"])


def test_a_report_opens_in_a_sandboxed_frame(tmp_path):
    from medtune.studio import browse

    report = tmp_path / "a" / "eval" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text('<h1>Base vs fine-tuned</h1><p title="x">a & b</p><script>alert(1)</script>', encoding="utf-8")
    frame = browse.report_frame(report)
    assert frame.startswith('<iframe class="report" sandbox=""') and "<script>" not in frame
    assert "&lt;h1&gt;Base vs fine-tuned" in frame and "a &amp; b" in frame and 'title=&quot;x&quot;' in frame
    assert browse.reports(tmp_path) == ["a/eval/report.html"] and "No report" in browse.report_frame(None)


def test_live_log_after_a_resume_and_the_eta(tmp_path):
    """The trainer's live log as a stopped and resumed run writes it: steps 3-4 ran twice (stopped after 4,
    last checkpoint at 2), so the first run's 3-4 are dropped when the resume begins at step 2."""
    rows = [{"event": "begin", "step": 0, "max_steps": 6, "time": 100.0}]
    rows += [{"loss": 5.0 - s / 10, "step": s, "max_steps": 6, "time": 100.0 + 2 * s} for s in (1, 2, 3, 4)]
    rows += [{"event": "begin", "step": 2, "max_steps": 6, "time": 200.0}]
    rows += [{"loss": 4.0 - s / 10, "step": s, "max_steps": 6, "time": 200.0 + 3 * (s - 2)} for s in (3, 4)]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"loss": 1.0, "st')
    kept = jobs.live_log(tmp_path)
    assert [(r.get("event"), r["step"]) for r in kept] == [("begin", 0), (None, 1), (None, 2), ("begin", 2), (None, 3), (None, 4)]
    assert kept[-1]["loss"] == pytest.approx(3.6)
    assert jobs.progress(kept) == {"step": 4, "max_steps": 6, "loss": pytest.approx(3.6), "eta_s": 6}


# ----------------------------------------------------------------------------- slow: a real training job

PREEMPTION = hasattr(__import__("medtune.errors").errors, "EXIT_PREEMPTED")  # issue 25: SIGTERM -> checkpoint, exit 75


def tiny_workdir(root: Path, model_dir: Path, max_steps: int) -> tuple[Path, Path]:
    """A work dir holding the tiny model, a small SFT file and a recipe that trains on them; ``(workdir, recipe)``."""
    import shutil

    from conftest import SAMPLES

    wd = root / "wd"
    model = shutil.copytree(model_dir, wd / "models" / "tiny")
    data = wd / "uploads" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SAMPLES * 4), encoding="utf-8")
    recipe = {"model": str(model), "output_dir": str(wd / "tiny"), "seed": 1,
              "train": {"train_file": str(data), "max_steps": max_steps, "save_steps": 1000, "learning_rate": 5e-3,
                        "warmup_ratio": 0.0, "per_device_train_batch_size": 2, "packing": False}}
    return wd, forms.save_recipe(recipe, "tiny", wd, [])


def wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


STEPS = 300


@pytest.mark.slow
@pytest.mark.xfail(not PREEMPTION, strict=True,
                   reason="needs issue 25 (medtune train: SIGTERM -> complete checkpoint, exit 75)")
def test_stopping_a_train_job_leaves_a_complete_checkpoint_and_resume_finishes_the_run(tmp_path, qwen_dir):
    from medtune.errors import EXIT_PREEMPTED

    # enough steps (~50 ms each on an idle 2-core CPU) that the stop always lands while training runs
    wd, recipe = tiny_workdir(tmp_path, qwen_dir, max_steps=STEPS)
    job = jobs.start_job(wd, "train", recipe)
    out = Path(job["output_dir"])
    wait_for(lambda: len([r for r in jobs.live_log(out) if "loss" in r]) >= 2, 300, "two logged steps")
    jobs.stop_job(jobs.find_job(wd, job["id"]))
    wait_for(lambda: jobs.attempt_state(jobs.find_job(wd, job["id"])["attempts"][-1])[0] != "running", 120, "the stop")

    row = jobs.summary(jobs.list_jobs(wd)[0])  # read back from disk, as a reopened page does
    assert (row["id"], row["state"], row["returncode"]) == (job["id"], "stopped", EXIT_PREEMPTED)
    ckpt = jobs.latest_checkpoint(out)
    step = int(ckpt.name.split("-")[1])
    assert 2 <= step < STEPS and row["checkpoint"] == ckpt.name
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == step and json.loads((out / "preempted.json").read_text())["step"] == step
    assert all((ckpt / f).is_file() for f in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt"))

    jobs.resume_job(jobs.find_job(wd, job["id"]))
    wait_for(lambda: jobs.summary(jobs.find_job(wd, job["id"]))["state"] in ("done", "failed"), 600, "the resumed run")
    done = jobs.find_job(wd, job["id"])
    assert jobs.summary(done)["state"] == "done" and len(done["attempts"]) == 2
    assert f"resuming from {ckpt}" in " ".join(Path(done["attempts"][1]["log"]).read_text().split())
    steps = [r["step"] for r in jobs.live_log(out) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # every step once: the resumed run continued at step + 1
    assert json.loads((out / "train_summary.json").read_text())["steps"] == STEPS
