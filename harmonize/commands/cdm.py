"""``fedomop cdm create``: create an empty OMOP CDM v5.4 database."""

from __future__ import annotations

from typing import Annotated, cast

import typer
from rich.console import Console

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.cdm.ddl import create_indexes
from fedomop.harmonize.cdm.schema import Constraints
from fedomop.harmonize.ground.db import connect

console = Console()


def register(app: typer.Typer) -> None:
    cdm_app = typer.Typer(help="The OMOP CDM v5.4 schema.", no_args_is_help=True)

    @cdm_app.command("create")
    def create(
        db: Annotated[str, typer.Option(help="Database URL or DuckDB file path.")],
        constraints: Annotated[
            str,
            typer.Option(
                help="none | primary | all. primary (default): primary keys xpk_<table> and NOT NULL. all: also "
                "the DDL's foreign keys fpk_<table>_<column> (off by default, as OHDSI advises: the isForeignKey "
                "data-quality check covers them; on DuckDB the keys closing a cycle between vocabulary tables "
                "are left out)."
            ),
        ] = "primary",
        indexes: Annotated[
            bool, typer.Option(help="Create the official DDL indexes (--no-indexes to skip, e.g. before a bulk load).")
        ] = True,
    ) -> None:
        """Create every CDM table (those that exist are left alone), with the official DDL's types and indexes."""
        if constraints not in ("none", "primary", "all"):
            raise typer.BadParameter("choose none, primary or all", param_hint="--constraints")
        database = connect(db)
        metadata = create_cdm(database.engine, constraints=cast(Constraints, constraints))  # checked above
        made = create_indexes(database.engine) if indexes else []
        console.print(f"created {len(metadata.tables)} OMOP CDM v5.4 tables and {len(made)} indexes in {database!r}")

    app.add_typer(cdm_app, name="cdm")
