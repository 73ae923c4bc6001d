"""``fedomop cdm create``: create an empty OMOP CDM v5.4 database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import connect

console = Console()


def register(app: typer.Typer) -> None:
    cdm_app = typer.Typer(help="The OMOP CDM v5.4 schema.", no_args_is_help=True)

    @cdm_app.command("create")
    def create(
        db: Annotated[str, typer.Option(help="Database URL or DuckDB file path.")],
        constraints: Annotated[str, typer.Option(help="none | primary | all (all adds foreign keys).")] = "primary",
    ) -> None:
        """Create every CDM table (those that exist are left alone)."""
        if constraints not in ("none", "primary", "all"):
            raise typer.BadParameter("choose none, primary or all", param_hint="--constraints")
        database = connect(db)
        metadata = create_cdm(database.engine, constraints=constraints)  # type: ignore[arg-type]
        console.print(f"created {len(metadata.tables)} OMOP CDM v5.4 tables in {database!r}")

    app.add_typer(cdm_app, name="cdm")
