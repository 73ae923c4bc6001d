"""``fedomop vocab load|resolve`` and ``fedomop import-cdm``: thin wrappers over fedomop.harmonize.vocabulary / cdm.io."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.vocabulary import (
    load_source_to_concept_map,
    load_vocabulary,
    load_vocabulary_extension,
    resolve_codes,
)
from fedomop.harmonize.vocabulary.cdm_io import load_cdm_folder

DbOption = Annotated[str, typer.Option("--db", help="Database URL or DuckDB file path.")]
FolderOption = Annotated[Path, typer.Option("--folder", help="Folder of CSV files.", file_okay=False)]


def _counts_table(title: str, counts: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in counts.items():
        table.add_row(name, f"{rows:,}")
    return table


def _mapping_table(resolved: pl.DataFrame) -> Table:
    table = Table(title="source code -> standard concept")
    for column in resolved.columns:
        table.add_column(column, overflow="fold")
    for row in resolved.iter_rows():
        table.add_row(*("" if value is None else str(value) for value in row))
    return table


def register(app: typer.Typer) -> None:
    vocab_app = typer.Typer(help="OMOP vocabularies: load Athena files, resolve source codes.", no_args_is_help=True)

    @vocab_app.command("load")
    def load(
        db: DbOption,
        folder: FolderOption,
        extension: Annotated[
            bool, typer.Option("--extension", help="Append a site extension (concept ids > 2,000,000,000) instead.")
        ] = False,
    ) -> None:
        """Replace the vocabulary tables with an Athena download or OHDSI CSV export (CONCEPT.csv, ...)."""
        if extension:
            counts = load_vocabulary_extension(connect(db), folder)
            Console().print(_counts_table(f"vocabulary extension added from {folder}", counts))
            return
        counts = load_vocabulary(connect(db), folder)
        Console().print(_counts_table(f"vocabulary loaded from {folder}", counts))

    @vocab_app.command("load-stcm")
    def load_stcm(
        db: DbOption,
        path: Annotated[Path, typer.Option("--path", help="The site's source_to_concept_map CSV.", dir_okay=False)],
    ) -> None:
        """Append a site's source_to_concept_map (targets must exist in CONCEPT)."""
        rows = load_source_to_concept_map(connect(db, must_exist=True), path)
        Console().print(f"appended {rows:,} source_to_concept_map rows from {path}")

    @vocab_app.command("resolve")
    def resolve(
        db: DbOption,
        vocabulary: Annotated[str, typer.Option("--vocabulary", help="Source vocabulary_id, e.g. ICD10CM.")],
        code: Annotated[list[str], typer.Option("--code", help="Source code as in Athena (repeatable).")],
    ) -> None:
        """Show the standard concept(s) each code maps to."""
        codes = pl.DataFrame({"vocabulary_id": [vocabulary] * len(code), "source_code": code})
        Console().print(_mapping_table(resolve_codes(connect(db, must_exist=True), codes)))

    app.add_typer(vocab_app, name="vocab")

    @app.command("import-cdm")
    def import_cdm(
        db: DbOption,
        folder: FolderOption,
        table: Annotated[list[str] | None, typer.Option("--table", help="Only these tables (repeatable).")] = None,
    ) -> None:
        """Import an OMOP CDM CSV export (PERSON.csv, CONCEPT.csv, ...), replacing each table it has a file for."""
        counts = load_cdm_folder(connect(db), folder, tables=table or None)
        Console().print(_counts_table(f"OMOP CDM imported from {folder}", counts))
