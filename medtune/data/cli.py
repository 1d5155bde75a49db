"""``medtune data ...`` subcommands (registered in :mod:`medtune.cli`).

| subcommand          | function                               |
|---------------------|----------------------------------------|
| ``data build RECIPE`` | :func:`medtune.data.build.build_data` |
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from medtune.config import ConfigError, field_help, load_recipe
from medtune.data.config import DataConfig, FilterConfig, SourceConfig
from medtune.data.records import DataSourceError
from medtune.data.teacher import TeacherConfig, TeacherError

data_app = typer.Typer(help="Build instruction data from medical sources.", no_args_is_help=True)
err = Console(stderr=True)


@data_app.command("build", epilog="Fields (use with --set):\n\n" + "\n\n".join(
    field_help(m, p) for m, p in ((DataConfig, "data"), (SourceConfig, "data.sources[i]"),
                                  (TeacherConfig, "data.teacher"), (FilterConfig, "data.filters"))))
def build(recipe: Path = typer.Argument(..., help="YAML recipe with a `data:` section."),
          sets: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set data.judge=true (repeatable)."),
          output_dir: Optional[Path] = typer.Option(None, help="Output folder (default <recipe output_dir>/data)."),
          ) -> None:
    """Read sources, generate QA pairs, filter, and write train/validation JSONL, stats.json and a data card."""
    from medtune.data.build import build_data

    try:
        r = load_recipe(recipe, sets)
        if r.data is None:
            raise ConfigError(f"{recipe}: no `data:` section (see `medtune data build --help`)")
        build_data(r.data, output_dir or r.output_dir / "data", seed=r.seed)
    except (ConfigError, DataSourceError, TeacherError, FileNotFoundError) as e:
        err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        raise typer.Exit(2) from None
