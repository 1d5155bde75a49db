"""The studio's own settings (``medtune studio`` options); the pipeline's settings are the recipe's."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from medtune.config import Section


class StudioConfig(Section):
    """Where ``medtune studio`` listens, who may use it and where it may read and write."""

    host: str = Field("127.0.0.1", description="Address to bind. Any address other than loopback (127.0.0.1, ::1, "
                                               "localhost) needs auth.")
    port: int = Field(7870, ge=1, le=65535, description="TCP port.")
    workdir: Path = Field(Path("runs"), description="Everything the studio writes goes here: saved recipes, uploads, "
                                                    "jobs and their logs, stage outputs, chat exports. Paths typed in "
                                                    "its forms must stay inside it.")
    auth: str | None = Field(None, description="USER:PASSWORD, or a file holding USER:PASSWORD lines (a line without "
                                               "':' is a token accepted as the password of any user name). Needed "
                                               "for a non-loopback host.")
    max_upload_mb: float = Field(20.0, gt=0, description="Largest file the page accepts, in MiB (recipes, sources).")
    read_roots: list[Path] = Field(default_factory=lambda: [Path("examples")],
                                   description="Folders outside the work dir that a recipe may read inputs from "
                                               "(sources, eval files, model folders; by default the shipped "
                                               "examples); outputs always go inside the work dir.")
    recipes_dir: Path = Field(Path("recipes"), description="Folder of shipped recipes offered in the recipe list.")
