"""The studio page (gradio): Recipe, Data, Train, Evaluate and Chat tabs over one saved recipe.

Every action goes through the functions the CLI uses: the recipe form validates with
:func:`medtune.recipe.validate_recipe`; data, training and evaluation run as the CLI's own commands
in background jobs (:mod:`medtune.studio.jobs`); the chat tab answers through
:mod:`medtune.studio.compare` (the ``medtune web`` turn pipeline). The page keeps nothing that
matters: recipes, jobs, logs and exports live in the work dir, so closing and reopening it loses
nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medtune.errors import ConfigError, MedtuneError
from medtune.recipe import load_recipe
from medtune.safety import DISCLAIMER
from medtune.studio import browse, compare, forms, jobs
from medtune.studio.access import UPLOADS, auth_check, check_bind, confine, save_upload
from medtune.studio.config import StudioConfig

try:
    import gradio as gr
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("medtune studio needs the web extra: pip install 'medtune[web]'") from e

POLL_S = 2.0  # how often the page refreshes jobs, curves and logs
METRICS = {"loss": "loss", "learning_rate": "learning rate", "tokens_per_s": "tokens/s", "peak_mem_gib": "peak memory (GiB)"}


def _error(e: Exception) -> str:
    return "**error:** " + str(e).replace("\n", "  \n")


def saved_recipes(cfg: StudioConfig) -> list[str]:
    """Recipes saved in the work dir (the ones jobs can run), newest first."""
    found = (cfg.workdir / forms.RECIPES).glob("*.yaml")
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def recipe_sources(cfg: StudioConfig) -> list[tuple[str, str]]:
    """``(label, path)`` of every recipe that can be opened: shipped, saved, uploaded."""
    shipped = sorted(Path(cfg.recipes_dir).glob("*.yaml")) if Path(cfg.recipes_dir).is_dir() else []
    uploads = sorted(p for p in (cfg.workdir / UPLOADS).glob("*") if p.suffix in (".yaml", ".yml"))
    return ([(f"shipped: {p.name}", str(p)) for p in shipped] + [(f"saved: {Path(p).name}", p) for p in saved_recipes(cfg)]
            + [(f"uploaded: {p.name}", str(p)) for p in uploads])


def recipe_path(cfg: StudioConfig, path: str | None) -> Path:
    """The active recipe's file: a recipe saved in ``<workdir>/recipes`` whose paths all stay in the work dir
    (checked again each time: the file may have been edited, or the request not come from the page).

    Raises:
        ConfigError: none chosen, or the recipe has problems; AccessError: outside ``<workdir>/recipes``.
    """
    if not path:
        raise ConfigError("no recipe chosen: open one in the Recipe tab and save it")
    found = confine(path, cfg.workdir / forms.RECIPES, what="recipe")
    data, _ = forms.open_recipe(found, cfg.workdir, move_output=False)
    problems = forms.problems(data, cfg.workdir, cfg.read_roots)
    if problems:
        raise ConfigError(f"{found.name}: " + "; ".join(problems))
    return found


def open_for_form(cfg: StudioConfig, path: str | None) -> tuple[dict, str]:
    """A recipe to edit: a shipped one (``cfg.recipes_dir``) or one in the work dir, nothing else on the machine.

    Raises:
        AccessError: elsewhere; ConfigError: not a YAML mapping.
    """
    return forms.open_recipe(confine(path or "", cfg.workdir, [cfg.recipes_dir], what="recipe"), cfg.workdir)


def _recipe_tab(cfg: StudioConfig, active) -> None:
    with gr.Row():
        source = gr.Dropdown(recipe_sources(cfg), label="Recipe to open (shipped, saved or uploaded)", elem_id="recipe-source", scale=4)
        upload = gr.UploadButton("Upload recipe (.yaml)", file_types=[".yaml", ".yml"], elem_id="recipe-upload", scale=1)
        open_btn = gr.Button("Open", elem_id="recipe-open", scale=1)
    note = gr.Markdown("", elem_id="recipe-note")
    data, opened = gr.State({}), gr.State(0)
    with gr.Row():
        name = gr.Textbox(label="Save as (name in the work dir)", elem_id="recipe-name", scale=3)
        section = gr.Dropdown(forms.sections(), value=forms.SHARED, label="Section", elem_id="recipe-section", scale=2)
        present = gr.Checkbox(label="section in the recipe", value=True, elem_id="section-present", scale=1)
    errors = gr.Markdown("", elem_id="recipe-errors")

    @gr.render(inputs=[section, data], triggers=[section.change, opened.change])
    def _form(section_name, current):
        hints = forms.placeholders(current, section_name)
        for field in forms.form_fields(section_name):
            widget = _widget(field, current, hints[field.path])
            events = [widget.input] + ([widget.blur] if isinstance(widget, gr.Textbox) else [])  # blur: a pasted value
            gr.on(events, lambda value, d, f=field: _edit(cfg, d, f, value), [widget, data], [data, errors, preview],
                  concurrency_id="recipe-edit", concurrency_limit=1, show_progress="hidden", trigger_mode="always_last")

    save = gr.Button("Save recipe", variant="primary", elem_id="recipe-save")
    with gr.Accordion("recipe.yaml as it will be saved", open=False):
        preview = gr.Code(language="yaml", show_label=False, elem_id="recipe-yaml", max_lines=40)

    def do_open(path, count):
        try:
            d, msg = open_for_form(cfg, path)
        except (MedtuneError, OSError, TypeError) as e:
            return gr.skip(), count, _error(e), gr.skip(), "", gr.skip(), gr.skip()
        found = forms.problems(d, cfg.workdir, cfg.read_roots)
        return d, count + 1, f"opened {path}. {msg}", Path(path).stem, _problems(found), _yaml(d), forms.SHARED

    def do_upload(file, count):
        try:
            path = save_upload(file, cfg.workdir, cfg.max_upload_mb, (".yaml", ".yml"))
        except MedtuneError as e:
            return gr.skip(), gr.skip(), gr.skip(), _error(e), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (gr.update(choices=recipe_sources(cfg), value=str(path)), *do_open(str(path), count))

    outs = [data, opened, note, name, errors, preview, section]
    open_btn.click(do_open, [source, opened], outs)
    upload.upload(do_upload, [upload, opened], [source, *outs])
    present.input(lambda d, s, on: _toggle(cfg, d, s, on), [data, section, present], [data, errors, preview])
    section.change(lambda d, s: s == forms.SHARED or s in d, [data, section], present)

    def do_save(d, stem, source_path):
        try:
            path = forms.save_recipe(d, stem, cfg.workdir, cfg.read_roots, origin=str(source_path or ""))
        except MedtuneError as e:
            return _error(e), gr.skip(), gr.skip()
        return f"saved {path}", gr.update(choices=saved_recipes(cfg), value=str(path)), gr.update(choices=recipe_sources(cfg))

    save.click(do_save, [data, name, source], [note, active, source])


def _widget(field: forms.FormField, data: dict, hint: str):
    """One form widget: the recipe's value, or empty with the value that will be used as placeholder."""
    kw = dict(label=field.label, info=field.help, elem_id="f-" + field.path.replace(".", "-"), interactive=True)
    value = forms.shown(field, data)
    if field.widget == "check":
        return gr.Checkbox(value=bool(value), **kw)
    if field.widget == "choice":
        return gr.Dropdown(list(field.choices), value=value, **kw)
    if field.widget == "number":
        return gr.Number(value=value, precision=0 if field.integer else None, placeholder=hint, **kw)
    return gr.Textbox(value=value, placeholder=hint, lines=6 if field.widget == "yaml" else 1, max_lines=30, **kw)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _problems(found: list[str]) -> str:
    return "" if not found else "**Not valid yet:**\n\n" + "\n".join(f"- {p}" for p in found)


def _edit(cfg: StudioConfig, data: dict, field: forms.FormField, value):
    try:
        data = forms.apply_edit(data, field, value)
    except MedtuneError as e:
        return gr.skip(), _error(e), gr.skip()
    return data, _problems(forms.problems(data, cfg.workdir, cfg.read_roots)), _yaml(data)


def _toggle(cfg: StudioConfig, data: dict, section: str, on: bool):
    if section == forms.SHARED:
        return gr.skip(), gr.skip(), gr.skip()
    data = forms.set_section(data, section, on)
    return data, _problems(forms.problems(data, cfg.workdir, cfg.read_roots)), _yaml(data)


# ----------------------------------------------------------------------------- jobs shared by the tabs


def _start(cfg: StudioConfig, kind: str, path: str | None) -> tuple[str, str]:
    """Start a job; ``(job id or "", message)``."""
    try:
        job = jobs.start_job(cfg.workdir, kind, recipe_path(cfg, path))
    except MedtuneError as e:
        return "", _error(e)
    return job["id"], f"started {kind} job {job['id']}"


def job_status(cfg: StudioConfig, job_id: str | None) -> str:
    """One paragraph on a job: state, step, ETA, checkpoint, the command."""
    if not job_id:
        return "*no job*"
    try:
        job = jobs.find_job(cfg.workdir, job_id)
    except MedtuneError as e:
        return _error(e)
    row = jobs.summary(job)
    parts = [f"**{row['id']}**: {row['state']}"]
    parts += [f"step {row['step']}"] if row["step"] else []
    parts += [f"ETA {row['eta']}"] if row["eta"] else []
    parts += [f"last complete checkpoint: {row['checkpoint']}"] if row["checkpoint"] else []
    parts += [f"exit status {row['returncode']}"] if row["returncode"] not in (None, 0) else []
    return " · ".join(parts) + f"  \n`medtune {' '.join(job['attempts'][-1]['command'][3:])}`"


def _log(cfg: StudioConfig, job_id: str | None) -> str:
    try:
        return jobs.log_tail(jobs.find_job(cfg.workdir, job_id)) if job_id else ""
    except MedtuneError:
        return ""


def _job_state(cfg: StudioConfig, job_id: str | None) -> str:
    try:
        return jobs.summary(jobs.find_job(cfg.workdir, job_id))["state"] if job_id else ""
    except MedtuneError:
        return ""


def _newest(cfg: StudioConfig, *kinds: str) -> str | None:
    return next((j["id"] for j in jobs.list_jobs(cfg.workdir) if j["kind"] in kinds), None)


# ----------------------------------------------------------------------------- data


SOURCE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".xlsx", ".txt", ".md", ".pdf", ".docx", ".hwp", ".hwpx", ".html")


def _upload_source(cfg: StudioConfig, file) -> str:
    try:
        path = save_upload(file, cfg.workdir, cfg.max_upload_mb, SOURCE_SUFFIXES)
    except MedtuneError as e:
        return _error(e)
    return (f"saved `{path}`: add it to `data.sources` in the Recipe tab "
            f"(e.g. `- {{path: {path}, type: corpus}}`), save, then build the data")


def _data_tab(cfg: StudioConfig, active, timer, ui) -> None:
    with gr.Row():
        build = gr.Button("Build data (medtune data build)", variant="primary", elem_id="build-data")
        index = gr.Button("Build the retrieval index (medtune index build)", elem_id="build-index")
        source = gr.UploadButton("Upload a source file", file_types=list(SOURCE_SUFFIXES), elem_id="source-upload")
    uploaded = gr.Markdown("", elem_id="source-note")
    job = gr.State("")
    status = gr.Markdown("*no job*", elem_id="data-status")
    with gr.Accordion("log", open=False):
        log = gr.Textbox(lines=10, max_lines=10, show_label=False, elem_id="data-log", autoscroll=True)
    with gr.Row():
        language = gr.Dropdown([""], value="", label="language", elem_id="data-language")
        generator = gr.Dropdown([""], value="", label="generator", elem_id="data-generator")
        text = gr.Textbox(label="contains", elem_id="data-text")
        show = gr.Button("Show", elem_id="data-show")
    count = gr.Markdown("", elem_id="data-count")
    table = gr.Dataframe(headers=browse.RECORD_COLUMNS, wrap=True, max_height=480, interactive=False, elem_id="records")
    with gr.Accordion("rejects (with reasons)", open=False):
        rejects = gr.Dataframe(headers=browse.REJECT_COLUMNS, wrap=True, interactive=False, elem_id="rejects")
    with gr.Accordion("data card and audit", open=False):
        card = gr.Markdown("", elem_id="data-card")

    def refresh(path, lang, gen, needle):
        try:
            data_dir = jobs.stage_dir("data", recipe_path(cfg, path))
        except MedtuneError as e:
            return _error(e), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        langs, gens = browse.facets(data_dir)
        rows, matched = browse.records(data_dir, lang or "", gen or "", needle or "")
        return (f"{matched} records match ({len(rows)} shown) in {data_dir}",
                pd.DataFrame(rows, columns=browse.RECORD_COLUMNS), pd.DataFrame(browse.rejects(data_dir), columns=browse.REJECT_COLUMNS),
                browse.data_card(data_dir), gr.update(choices=[""] + langs), gr.update(choices=[""] + gens))

    views = [count, table, rejects, card, language, generator]
    show.click(refresh, [active, language, generator, text], views)
    for box in (language, generator):
        box.input(refresh, [active, language, generator, text], views)
    active.change(refresh, [active, language, generator, text], views)
    ui.load(refresh, [active, language, generator, text], views)
    build.click(lambda p: _start(cfg, "data", p), active, [job, status])
    source.upload(lambda f: _upload_source(cfg, f), source, uploaded)
    index.click(lambda p: _start(cfg, "index", p), active, [job, status])
    ui.load(lambda: _newest(cfg, "data", "index") or "", None, job)  # a reopened page shows the last job

    seen = gr.State("")
    timer.tick(lambda j: (job_status(cfg, j), _log(cfg, j), _job_state(cfg, j)), job, [status, log, seen],
               show_progress="hidden")
    seen.change(lambda s, p, lang, gen, t: refresh(p, lang, gen, t) if s == "done" else (gr.skip(),) * 6,
                [seen, active, language, generator, text], views)


# ----------------------------------------------------------------------------- train


JOB_COLUMNS = ["id", "kind", "recipe", "state", "step", "eta", "checkpoint", "attempts", "started"]


def jobs_frame(cfg: StudioConfig) -> pd.DataFrame:
    """Every job of the work dir with its state (the page's jobs table)."""
    return pd.DataFrame([[r[c] for c in JOB_COLUMNS] for r in map(jobs.summary, jobs.list_jobs(cfg.workdir))],
                        columns=JOB_COLUMNS)


def curves(cfg: StudioConfig, job_id: str | None) -> pd.DataFrame:
    """The job's logged training steps: ``step`` and the :data:`METRICS` columns (empty before the first step)."""
    rows = []
    if job_id:
        try:
            job = jobs.find_job(cfg.workdir, job_id)
            rows = [r for r in jobs.live_log(Path(job["output_dir"])) if "loss" in r] if job["kind"] == "train" else []
        except MedtuneError:
            rows = []
    frame = pd.DataFrame([{"step": r["step"], **{m: r.get(m) for m in METRICS}} for r in rows], columns=["step", *METRICS])
    return frame.apply(pd.to_numeric, errors="coerce").astype("float64")  # numbers (also when empty): quantitative axes


def _train_tab(cfg: StudioConfig, active, timer, ui) -> None:
    start = gr.Button("Start training (medtune train)", variant="primary", elem_id="start-train")
    message = gr.Markdown("", elem_id="train-message")
    table = gr.Dataframe(jobs_frame(cfg), headers=JOB_COLUMNS, interactive=False, elem_id="jobs", label="jobs")
    with gr.Row():
        job = gr.Dropdown(_job_ids(cfg), label="job", elem_id="job", scale=3)
        stop = gr.Button("Stop (save a checkpoint, then exit)", variant="stop", elem_id="stop", scale=1)
        resume = gr.Button("Resume from the last checkpoint", elem_id="resume", scale=1)
    status = gr.Markdown("*no job*", elem_id="job-status")
    caption = gr.Markdown("", elem_id="plot-caption")
    plots = []
    for pair in (list(METRICS)[:2], list(METRICS)[2:]):
        with gr.Row():
            plots += [gr.LinePlot(curves(cfg, None), x="step", y=m, title=METRICS[m], elem_id=f"plot-{m}", height=220)
                      for m in pair]
    with gr.Accordion("log", open=False):
        log = gr.Textbox(lines=14, max_lines=14, show_label=False, elem_id="job-log", autoscroll=True)
    drawn = gr.State(None)

    def tick(job_id, last):
        frame = curves(cfg, job_id)
        key = (job_id, len(frame))
        draw = [frame] * len(plots) if key != last else [gr.skip()] * len(plots)
        shown = f"{len(frame)} logged steps" + (f", last loss {frame['loss'].iloc[-1]:.4f}" if len(frame) else "")
        return (jobs_frame(cfg), gr.update(choices=_job_ids(cfg)), job_status(cfg, job_id), shown,
                *draw, _log(cfg, job_id), key)

    outputs = [table, job, status, caption, *plots, log, drawn]
    timer.tick(tick, [job, drawn], outputs, show_progress="hidden")
    job.change(tick, [job, drawn], outputs, show_progress="hidden")

    def do_start(path):
        job_id, msg = _start(cfg, "train", path)
        return (gr.update(choices=_job_ids(cfg), value=job_id) if job_id else gr.skip()), msg

    start.click(do_start, active, [job, message])
    ui.load(lambda: gr.update(choices=_job_ids(cfg), value=_newest(cfg, "train")), None, job)  # a reopened page
    stop.click(lambda j: _act(cfg, j, jobs.stop_job, "stop asked: the run finishes its step, saves a checkpoint and exits"),
               job, message)
    resume.click(lambda j: _act(cfg, j, jobs.resume_job, "resumed from the last complete checkpoint"), job, message)


def _job_ids(cfg: StudioConfig) -> list[str]:
    return [j["id"] for j in jobs.list_jobs(cfg.workdir)]


def _act(cfg: StudioConfig, job_id: str | None, action, done: str) -> str:
    try:
        action(jobs.find_job(cfg.workdir, job_id or ""))
    except (MedtuneError, ProcessLookupError) as e:
        return _error(e)
    return f"{job_id}: {done}"


# ----------------------------------------------------------------------------- evaluate


def _report(cfg: StudioConfig, rel: str | None) -> str:
    if not rel:
        return browse.report_frame(None)
    try:
        return browse.report_frame(confine(cfg.workdir / rel, cfg.workdir, what="report"))
    except MedtuneError as e:
        return _error(e)


def _eval_tab(cfg: StudioConfig, active, timer, ui) -> None:
    run = gr.Button("Run evaluation (medtune run --only eval)", variant="primary", elem_id="run-eval")
    job = gr.State("")
    status = gr.Markdown("*no job*", elem_id="eval-status")
    with gr.Accordion("log", open=False):
        log = gr.Textbox(lines=10, max_lines=10, show_label=False, elem_id="eval-log", autoscroll=True)
    refresh = gr.Button("Refresh the report lists", elem_id="refresh-reports")
    with gr.Row():
        with gr.Column():
            a = gr.Dropdown(browse.reports(cfg.workdir), label="report A", elem_id="report-a")
            frame_a = gr.HTML(browse.report_frame(None), elem_id="report-a-frame")
        with gr.Column():
            b = gr.Dropdown(browse.reports(cfg.workdir), label="report B", elem_id="report-b")
            frame_b = gr.HTML(browse.report_frame(None), elem_id="report-b-frame")
    a.change(lambda rel: _report(cfg, rel), a, frame_a)
    b.change(lambda rel: _report(cfg, rel), b, frame_b)
    refresh.click(lambda: (gr.update(choices=browse.reports(cfg.workdir)),) * 2, None, [a, b])
    ui.load(lambda: (gr.update(choices=browse.reports(cfg.workdir)),) * 2, None, [a, b])
    run.click(lambda p: _start(cfg, "eval", p), active, [job, status])
    ui.load(lambda: _newest(cfg, "eval") or "", None, job)
    seen = gr.State("")
    timer.tick(lambda j: (job_status(cfg, j), _log(cfg, j), _job_state(cfg, j)), job, [status, log, seen],
               show_progress="hidden")

    def finished(state, job_id):
        if state != "done":
            return gr.skip(), gr.skip()
        out = Path(jobs.find_job(cfg.workdir, job_id)["output_dir"]) / "report.html"
        rel = str(out.resolve().relative_to(cfg.workdir.resolve()))
        choices = browse.reports(cfg.workdir)
        return gr.update(choices=choices, value=rel), gr.update(choices=choices)

    seen.change(finished, [seen, job], [a, b])


# ----------------------------------------------------------------------------- chat


def _models_note(cfg: StudioConfig, path: str | None) -> str:
    try:
        recipe = load_recipe(recipe_path(cfg, path))
        model, adapter = compare.finetuned_model(recipe)
    except MedtuneError as e:
        return _error(e)
    return f"**base:** `{recipe.model}` · **fine-tuned:** `{model}`" + (f" + adapter `{adapter}`" if adapter else "")


def _respond(cfg: StudioConfig, prompt, base, tuned, system, temperature, max_tokens, path, turns):
    try:
        recipe = load_recipe(recipe_path(cfg, path))
        web = compare.chat_config(recipe)
        model, adapter = compare.finetuned_model(recipe)
        backends = {"base": compare.backend(recipe.model, None, web), "finetuned": compare.backend(model, adapter, web)}
    except MedtuneError as e:
        yield base, tuned, "", "", prompt, turns, _error(e)
        return
    settings = web.generation.model_copy(update={"temperature": float(temperature), "max_new_tokens": int(max_tokens)})
    note = _models_note(cfg, path)
    record = None
    for histories, banner, sources, record in compare.answer_both(prompt, {"base": base, "finetuned": tuned}, system or "",
                                                                 web, settings, backends):
        yield histories["base"], histories["finetuned"], banner, sources, "", turns, note
    turns = turns + [record]
    answered = f"{len(turns)} turn{'s' if len(turns) > 1 else ''} answered"
    yield histories["base"], histories["finetuned"], banner, sources, "", turns, f"{note} · {answered}"


def _chat_tab(cfg: StudioConfig, active, ui) -> None:
    note = gr.Markdown("", elem_id="chat-models")
    banner = gr.HTML("", elem_id="urgent-banner")
    with gr.Row():
        base = gr.Chatbot(label="base model", elem_id="chat-base", height=380)
        tuned = gr.Chatbot(label="fine-tuned model", elem_id="chat-finetuned", height=380)
    sources = gr.HTML("", elem_id="sources")
    with gr.Row():
        prompt = gr.Textbox(placeholder="A question, asked to both models...", show_label=False, elem_id="prompt", scale=5)
        send = gr.Button("Send to both", variant="primary", elem_id="send", scale=1)
    with gr.Accordion("System prompt and generation settings", open=False):
        system = gr.Textbox("", label="System prompt (empty: the safety layer's default)", lines=3)
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)")
        max_tokens = gr.Slider(1, 2048, value=128, step=1, label="max new tokens")
    turns = gr.State([])
    with gr.Row():
        clear = gr.Button("Clear conversation", elem_id="clear-chat")
        export = gr.Button("Export conversation (JSONL)", elem_id="export-chat")
        exported = gr.File(label="exported conversation", elem_id="export-file", interactive=False)
    inputs = [prompt, base, tuned, system, temperature, max_tokens, active, turns]
    outputs = [base, tuned, banner, sources, prompt, turns, note]
    send.click(lambda *a: (yield from _respond(cfg, *a)), inputs, outputs, concurrency_id="chat", concurrency_limit=1)
    prompt.submit(lambda *a: (yield from _respond(cfg, *a)), inputs, outputs, concurrency_id="chat", concurrency_limit=1)
    clear.click(lambda: ([], [], "", "", []), None, [base, tuned, banner, sources, turns])
    active.change(lambda p: _models_note(cfg, p), active, note)
    ui.load(lambda p: _models_note(cfg, p), active, note)

    def do_export(t, path):
        try:
            recipe = load_recipe(recipe_path(cfg, path))
            model, adapter = compare.finetuned_model(recipe)
            return str(compare.export_turns(t, cfg.workdir, {"base": recipe.model, "finetuned": model,
                                                             "adapter": str(adapter) if adapter else None})), gr.skip()
        except MedtuneError as e:
            return None, _error(e)

    export.click(do_export, [turns, active], [exported, note])


# ----------------------------------------------------------------------------- page


def build_studio(cfg: StudioConfig) -> "gr.Blocks":
    """The whole page: the active recipe on top, then the Recipe, Data, Train, Evaluate and Chat tabs."""
    with gr.Blocks(title="medtune studio") as ui:
        gr.Markdown(f"## medtune studio\nWork dir: `{cfg.workdir}` · *{DISCLAIMER['en']}*", elem_id="studio-header")
        saved = saved_recipes(cfg)
        active = gr.Dropdown(saved, value=saved[0] if saved else None, elem_id="active-recipe",
                             label="Active recipe (saved in the work dir): the Data, Train, Evaluate and Chat tabs use it")
        timer = gr.Timer(POLL_S)
        with gr.Tabs():
            with gr.Tab("Recipe", id="recipe", elem_id="tab-recipe"):
                _recipe_tab(cfg, active)
            with gr.Tab("Data", id="data", elem_id="tab-data"):
                _data_tab(cfg, active, timer, ui)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                _train_tab(cfg, active, timer, ui)
            with gr.Tab("Evaluate", id="eval", elem_id="tab-eval"):
                _eval_tab(cfg, active, timer, ui)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                _chat_tab(cfg, active, ui)

        def reopen():
            found = saved_recipes(cfg)
            return gr.update(choices=found, value=found[0] if found else None)

        ui.load(reopen, None, active)
    return ui


def launch_studio(cfg: StudioConfig, block: bool = True):
    """Start the studio on ``cfg.host:cfg.port``.

    Uploads land in ``<workdir>/.gradio`` (gradio's upload folder, set through ``GRADIO_TEMP_DIR``) and are
    copied into ``<workdir>/uploads`` when accepted; only ``<workdir>/exports`` can be downloaded.

    Returns:
        The running gradio app (when ``block`` is False, e.g. in tests; call ``.close()``).

    Raises:
        AccessError: a non-loopback host without ``cfg.auth``, or an unusable ``cfg.auth``.
    """
    check_bind(cfg.host, cfg.auth)
    auth = auth_check(cfg.auth) if cfg.auth else None
    workdir = Path(cfg.workdir)
    for sub in (".gradio", compare.EXPORTS, forms.RECIPES):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str((workdir / ".gradio").resolve())
    ui = build_studio(cfg)
    ui.queue(default_concurrency_limit=2)
    ui.launch(server_name=cfg.host, server_port=cfg.port, auth=auth, prevent_thread_lock=not block,
              quiet=not block, max_file_size=int(cfg.max_upload_mb * 2**20),
              allowed_paths=[str((workdir / compare.EXPORTS).resolve())], footer_links=[])
    return ui
