"""``fedomop demo``: the whole job on the bundled sample sites (grows with each capability)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harmonize.cdm import create_cdm
from harmonize.db import connect

console = Console()
SITES = ("site_a", "site_b", "site_c", "site_d")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option(help="Folder for the site databases and reports.")] = Path("out"),
    ) -> None:
        """Build every sample site's OMOP database (then validate, report and train as those land)."""
        out.mkdir(parents=True, exist_ok=True)
        for site in SITES:
            database = connect(out / f"{site}.duckdb")
            create_cdm(database.engine)
            console.print(f"{site}: OMOP CDM v5.4 schema ready in {out / f'{site}.duckdb'}")
