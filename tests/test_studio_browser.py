"""Acceptance of ``medtune studio`` (issue 31): headless Chromium walks the page as a user would.

Upload the quickstart recipe set to the tiny model, edit it in the form, save; build the data and
the retrieval index and browse the records; train while the loss curve grows; stop the run (a
complete checkpoint when the trainer is preemption-safe, issue 25), reopen the page and find it,
resume it to the end; evaluate and open the report; ask base and fine-tuned the same red-flag
question (urgent banner, citations) and export the conversation.

``MEDTUNE_STUDIO_SHOTS=docs/img`` writes the screenshots that docs/studio.md shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from medtune.studio import jobs
from servekit import free_port

pytest.importorskip("gradio")
CHROMIUM = os.environ.get("MEDTUNE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).parent.parent
RED_FLAG = "My dad has crushing chest pain and is sweating."
COVERED = "What blood pressure counts as hypertension in adults?"
PREEMPTION = hasattr(__import__("medtune.errors").errors, "EXIT_PREEMPTED")  # issue 25 landed
STEPS = 400  # train steps: ~50 ms each on an idle 2-core CPU, so Stop always lands while training runs


def tiny_quickstart(path: Path, model: Path) -> Path:
    """recipes/quickstart.yaml with the tiny model as base and teacher, a retrieval index, and a small eval."""
    r = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text(encoding="utf-8"))
    r["model"] = str(model)
    r["data"]["teacher"] = {"model": str(model), "max_tokens": 32}
    r["train"].update(bf16=False, save_steps=1000)
    r["rag"] = {}
    r["eval"].update(max_fact_items=4, fact_generation={"max_new_tokens": 8})
    path.write_text(yaml.safe_dump(r, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def wait_text(page, selector: str, pattern: str, timeout_s: float) -> str:
    """Wait until the element's text matches the regular expression ``pattern``; returns the text."""
    page.wait_for_function("([s, p]) => { const e = document.querySelector(s); return e && new RegExp(p).test(e.innerText); }",
                           arg=[selector, pattern], timeout=timeout_s * 1000)
    return page.inner_text(selector)


def pick(page, dropdown: str, option: str) -> None:
    page.click(f"{dropdown} input")
    page.get_by_role("option", name=option, exact=True).click()


def shot(page, path: Path, top: str) -> None:
    """A screenshot of the page from the element ``top`` down (dropdowns closed)."""
    page.keyboard.press("Escape")
    page.evaluate("(s) => document.querySelector(s).scrollIntoView()", top)
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))


def plotted_steps(page, plot: str) -> int:
    """Points drawn in a line plot (vega labels each point 'step: N; ...')."""
    return page.evaluate("(s) => new Set(Array.from(document.querySelectorAll(s + ' svg [aria-label^=\"step: \"]'))"
                         ".map(e => e.getAttribute('aria-label'))).size", plot)


@pytest.fixture
def studio(tmp_path, qwen_dir, monkeypatch):
    from medtune.studio.app import launch_studio
    from medtune.studio.config import StudioConfig

    monkeypatch.chdir(REPO)  # the quickstart recipe reads examples/ relative to the project
    wd = tmp_path / "studio"
    model = shutil.copytree(qwen_dir, wd / "models" / "tiny")
    port = free_port()
    ui = launch_studio(StudioConfig(workdir=wd, port=port), block=False)
    yield f"http://127.0.0.1:{port}/", wd, tiny_quickstart(tmp_path / "tiny-quickstart.yaml", model)
    ui.close()
    for job in jobs.list_jobs(wd):  # nothing left running
        if jobs.attempt_state(job["attempts"][-1])[0] == "running":
            jobs.stop_job(job)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM),
                    reason=f"no chromium at {CHROMIUM} (install: apt-get install -y chromium; see scripts/ci_system_deps.sh)")
def test_a_user_walks_the_whole_pipeline_in_the_studio(studio, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    url, wd, recipe = studio
    shots = Path(os.environ.get("MEDTUNE_STUDIO_SHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url, wait_until="domcontentloaded")
            _recipe(page, recipe, wd, shots)
            _data(page, shots)
            job_id = _train_stop_reopen_resume(page, url, wd, shots)
            _evaluate(page, shots)
            _chat(page, wd, shots)
        finally:
            browser.close()
    assert jobs.summary(jobs.find_job(wd, job_id))["state"] == "done"


def _recipe(page, recipe: Path, wd: Path, shots: Path) -> None:
    page.wait_for_selector("#recipe-source", timeout=120_000)
    page.set_input_files('input[data-testid="Upload recipe (.yaml)-upload-button"]', str(recipe))
    assert "output_dir set to" in wait_text(page, "#recipe-note", "opened .*tiny-quickstart.yaml", 60)
    pick(page, "#recipe-section", "train")
    page.fill("#f-train-learning_rate input", "-1")  # a wrong value: the error shows in the form, by key
    page.locator("#f-train-learning_rate input").press("Tab")
    wait_text(page, "#recipe-errors", "train.learning_rate: Input should be greater than 0", 30)
    page.fill("#f-train-learning_rate input", "0.001")
    page.locator("#f-train-learning_rate input").press("Tab")
    page.fill("#f-train-max_steps input", str(STEPS))
    page.locator("#f-train-max_steps input").press("Tab")
    page.fill("#f-train-output_dir textarea", "../../outside")  # a path out of the work dir is refused
    page.locator("#f-train-output_dir textarea").press("Tab")
    wait_text(page, "#recipe-errors", "train.output_dir '../../outside' is outside the studio's work dir", 30)
    page.click("#recipe-save")
    wait_text(page, "#recipe-note", "outside the studio's work dir", 30)
    assert not (wd / "recipes" / "tiny-quickstart.yaml").exists()
    page.fill("#f-train-output_dir textarea", "")
    page.locator("#f-train-output_dir textarea").press("Tab")
    page.wait_for_function("() => !document.querySelector('#recipe-errors').innerText.trim()", timeout=30_000)
    shot(page, shots / "studio-recipe.png", "#recipe-section")
    page.click("#recipe-save")
    wait_text(page, "#recipe-note", "saved .*tiny-quickstart.yaml", 30)
    saved = yaml.safe_load((wd / "recipes" / "tiny-quickstart.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["max_steps"] == STEPS and saved["train"]["learning_rate"] == 0.001
    assert "output_dir" not in saved["train"] and saved["output_dir"] == str(wd / "tiny-quickstart")


def _data(page, shots: Path) -> None:
    page.get_by_role("tab", name="Data").click()
    page.click("#build-data")
    wait_text(page, "#data-status", r"data-tiny-quickstart: done", 400)
    total = int(re.search(r"(\d+) records match", wait_text(page, "#data-count", r"\d+ records match", 60)).group(1))
    pick(page, "#data-language", "en")
    wait_text(page, "#data-count", rf"(^|\D)(?!{total} )\d+ records match", 60)
    read_rows = ("() => Array.from(document.querySelectorAll('#records [role=row][aria-rowindex]'))"
                 ".map(r => Array.from(r.querySelectorAll('[role=gridcell], td')).map(c => c.innerText.trim()))")
    try:  # the count can update a moment before the table is redrawn: wait for the table itself
        page.wait_for_function(f"() => {{ const rows = ({read_rows})().slice(1).filter(r => r.some(c => c));"
                               " return rows.length > 0 && rows.every(r => r[1] === 'en'); }", timeout=60_000)
    except __import__("playwright.sync_api").sync_api.TimeoutError:
        pass  # the assertion below shows the rows
    rows = page.evaluate(read_rows)
    langs = [r[1] for r in rows[1:] if any(r)]  # rows[0]: the header
    assert langs and set(langs) == {"en"}, rows
    page.get_by_text("rejects (with reasons)").click()
    wait_text(page, "#rejects", "no name field", 30)
    shot(page, shots / "studio-data.png", "#data-status")
    page.click("#build-index")
    wait_text(page, "#data-status", r"index-tiny-quickstart: done", 300)


def _train_stop_reopen_resume(page, url: str, wd: Path, shots: Path) -> str:
    page.get_by_role("tab", name="Train").click()
    page.click("#start-train")
    wait_text(page, "#train-message", "started train job", 30)
    wait_text(page, "#plot-caption", r"^[1-9]\d* logged steps", 400)
    first = plotted_steps(page, "#plot-loss")
    page.wait_for_function("() => { const m = /^(\\d+) logged/.exec(document.querySelector('#plot-caption').innerText);"
                           " return m && +m[1] >= 2; }", timeout=300_000)
    page.wait_for_function("(n) => new Set(Array.from(document.querySelectorAll('#plot-loss svg [aria-label^=\"step: \"]'))"
                           ".map(e => e.getAttribute('aria-label'))).size > n", arg=first, timeout=60_000)
    job_id = page.locator("#job input").input_value()
    shot(page, shots / "studio-train.png", "#job-status")
    page.click("#stop")
    status = wait_text(page, "#job-status", ": stopped", 180)
    ckpt = jobs.latest_checkpoint(Path(jobs.find_job(wd, job_id)["output_dir"]))
    if PREEMPTION:  # issue 25: the stop leaves a complete checkpoint of the step it stopped after
        assert ckpt is not None and (ckpt / "trainer_state.json").is_file() and ckpt.name in status
    page.reload(wait_until="domcontentloaded")  # close and reopen the page: the run is still there
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("(j) => document.querySelector('#job input').value === j", arg=job_id, timeout=60_000)
    wait_text(page, "#job-status", ": stopped", 60)
    wait_text(page, "#jobs", "stopped", 30)
    page.click("#resume")
    wait_text(page, "#job-status", ": running", 60)
    wait_text(page, "#job-status", rf": done · step {STEPS}/{STEPS}", 600)
    wait_text(page, "#plot-caption", rf"^{STEPS} logged steps", 30)
    shot(page, shots / "studio-resumed.png", "#jobs")
    return job_id


def _evaluate(page, shots: Path) -> None:
    page.get_by_role("tab", name="Evaluate").click()
    page.click("#run-eval")
    wait_text(page, "#eval-status", r"eval-tiny-quickstart: done", 600)
    report = page.frame_locator("#report-a-frame iframe")
    report.get_by_text("Base vs fine-tuned").first.wait_for(timeout=60_000)
    pick(page, "#report-b", "tiny-quickstart/eval/report.html")
    page.frame_locator("#report-b-frame iframe").get_by_text("Base vs fine-tuned").first.wait_for(timeout=60_000)
    shot(page, shots / "studio-eval.png", "#refresh-reports")


def _chat(page, wd: Path, shots: Path) -> None:
    page.get_by_role("tab", name="Chat").click()
    assert "adapter" in wait_text(page, "#chat-models", "fine-tuned", 60)
    page.fill("#prompt textarea", RED_FLAG)
    page.click("#send")
    wait_text(page, "#chat-models", "1 turn answered", 300)
    for side in ("#chat-base", "#chat-finetuned"):
        answer = page.locator(f"{side} .bot").last.inner_text().strip()
        assert answer.startswith("⚠️ URGENT") and "not a diagnosis" in answer, answer
    assert "911" in page.inner_text("#urgent-banner")
    page.fill("#prompt textarea", COVERED)  # a second turn the guideline covers: its passages are cited
    page.click("#send")
    wait_text(page, "#chat-models", "2 turns answered", 300)
    assert page.locator("#chat-base .bot").count() == page.locator("#chat-finetuned .bot").count() == 2
    assert "Sources" in page.inner_text("#sources") and "hypertension_en.md" in page.inner_text("#sources")
    shot(page, shots / "studio-chat.png", "#urgent-banner")
    page.click("#export-chat")
    wait_text(page, "#export-file", r"chat-[0-9-]+\s*\.jsonl", 60)
    (exported,) = (wd / "exports").glob("chat-*.jsonl")
    first, second = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    assert first["prompt"] == RED_FLAG and first["flags"] and first["base"].startswith("⚠️ URGENT")
    assert first["finetuned"].startswith("⚠️ URGENT") and first["base"] != first["finetuned"]
    assert second["prompt"] == COVERED and second["citations"][0]["source_file"].endswith("hypertension_en.md")
    assert second["models"]["adapter"].endswith("adapter")
