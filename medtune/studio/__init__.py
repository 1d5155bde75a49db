"""``medtune studio``: the whole pipeline in a local web page, for the clinicians and analysts on the team.

A top-floor package: it composes the stages the way ``run.py`` and ``cli.py`` do and implements none
of them. Data, training and evaluation run as the CLI's own commands in background jobs; the chat
compares base and fine-tuned through the ``medtune web`` turn pipeline.

- :mod:`medtune.studio.config`   the studio's options (host, port, work dir, auth, upload limit);
- :mod:`medtune.studio.access`   safe by default: loopback unless ``--auth``, paths confined to the work dir;
- :mod:`medtune.studio.forms`    the recipe form generated from the pydantic configs;
- :mod:`medtune.studio.jobs`     background jobs with their state on disk (start, stop, resume, live curves);
- :mod:`medtune.studio.supervise`  runs one attempt of a job and records how it ended;
- :mod:`medtune.studio.browse`   records with provenance, rejects, data card, eval reports;
- :mod:`medtune.studio.compare`  base vs fine-tuned chat, exported as JSONL;
- :mod:`medtune.studio.app`      the gradio page and :func:`~medtune.studio.app.launch_studio`.
"""
