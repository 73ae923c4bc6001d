"""``fedomop map``: run a site mapping into an OMOP database, with progress per table and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.mapping.models import Mapping
from fedomop.harmonize.run import NothingLoadedError, RunReport, run_mapping
from fedomop.harmonize.run.chunking import DEFAULT_CHUNK_MB
from fedomop.harmonize.run.coverage import concept_coverage, coverage_failures, share
from fedomop.harmonize.run.lineage import ALL_TABLES

console = Console()


class TableProgress:
    """One rich progress bar per step/table, fed by the engine's progress callback."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=max(total, 1))
        self.progress.update(self.tasks[label], completed=done if total else 1, total=max(total, 1))


def summary_table(report: RunReport, *, top: int = 5) -> tuple[Table, Table]:
    """Rows per OMOP table and the most frequent quarantine reasons."""
    tables = Table(title=f"{report.site}: {report.records_read:,} source records, run {report.run_id}")
    tables.add_column("OMOP table")
    tables.add_column("rows loaded", justify="right")
    tables.add_column("records quarantined", justify="right")
    per_table = (
        report.reconciliation.filter(pl.col("omop_table") != ALL_TABLES)
        .group_by("omop_table")
        .agg(pl.col("quarantined").sum())
    )
    held = dict(per_table.iter_rows())
    for name, rows in sorted(report.loaded.items()):
        tables.add_row(name, f"{rows:,}", f"{held.get(name, 0):,}")
    tables.add_row(
        "[bold]all[/]",
        f"[bold]{report.rows_loaded:,}[/]",
        f"[bold]{report.records_quarantined - report.records_excluded:,}[/]",
    )
    reasons = Table(title="top quarantine reasons")
    reasons.add_column("reason")
    reasons.add_column("rows", justify="right")
    for reason, count in list(report.quarantine_reasons.items())[:top]:
        reasons.add_row(reason, f"{count:,}")
    return tables, reasons


def sources_table(report: RunReport) -> Table:
    """Per source: records read, loaded, quarantined, and the OMOP tables it fed (the reconciliation)."""
    recon = report.reconciliation
    fed = (
        recon.filter((pl.col("omop_table") != ALL_TABLES) & (pl.col("loaded") > 0))
        .group_by("source")
        .agg(pl.col("omop_table").sort().str.join(", "))
    )
    totals = recon.filter(pl.col("omop_table") == ALL_TABLES).join(fed, on="source", how="left", suffix="_fed")
    table = Table(title="reconciliation per source (read = loaded + excluded + quarantined)")
    for name in ("source", "read", "loaded", "excluded", "quarantined", "OMOP tables"):
        table.add_column(name, justify="left" if name in ("source", "OMOP tables") else "right")
    for row in totals.iter_rows(named=True):
        mark = "" if row["balanced"] else " [red]unbalanced[/]"
        excluded = report.excluded.get(row["source"], 0)  # by a mapping rule, on purpose: not an error
        table.add_row(
            escape(row["source"]),
            f"{row['source_count']:,}",
            f"{row['loaded']:,}",
            f"{excluded:,}",
            f"{row['quarantined'] - excluded:,}{mark}",
            escape(row["omop_table_fed"] or "-"),
        )
    return table


def print_summary(report: RunReport, out: Console = console, *, committed: bool = True) -> None:
    tables, reasons = summary_table(report)
    out.print(tables)
    out.print(sources_table(report))
    if report.quarantine_reasons:
        out.print(reasons)
    if report.records_excluded:
        out.print(
            f"{report.records_excluded:,} records were excluded by a mapping rule (a source's exclude:, e.g. a FHIR "
            "status such as entered-in-error, or no rule's when: selects them), not errors; they are counted apart "
            "from the quarantined records above, and fedomop_quarantine lists each with its rule's reason",
            highlight=False,
        )
    state = "[green]balanced[/]" if report.balanced else "[red]NOT balanced[/]"
    where = f"-> {report.database}" if committed else f"{escape(report.database)} not replaced"
    out.print(f"reconciliation {state}; {report.seconds:.1f}s {where}", highlight=False)


def print_coverage(report: RunReport, mapping: Mapping, out: Console = console) -> bool:
    """Print concept coverage per table and source vocabulary; False when a table is below its min_coverage."""
    database = connect(report.database, read_only=True)
    try:
        coverage = concept_coverage(database, mapping)
    finally:
        database.dispose()  # a later reader of the same DuckDB file must not meet this connection
    table = Table(title="concept coverage (records mapped to a standard concept / to 0)")
    for name in ("OMOP table", "source vocabulary", "records", "mapped", "to 0", "coverage"):
        table.add_column(name, justify="left" if name in ("OMOP table", "source vocabulary") else "right")
    for row in coverage.iter_rows(named=True):
        table.add_row(row["omop_table"], row["source_vocabulary_id"], f"{row['records']:,}", f"{row['mapped']:,}",
                      f"{row['unmapped']:,}", share(row["coverage"]))  # fmt: skip
    out.print(table)
    failures = coverage_failures(coverage, mapping)
    for failure in failures:
        out.print(f"[red]coverage too low[/] {failure}", highlight=False)
    return not failures


def map_site(
    mapping: Path,
    source: Path,
    db: str,
    vocabulary: Path | None,
    *,
    out: Console = console,
    chunks: int | None = None,
    chunk_mb: int = DEFAULT_CHUNK_MB,
    scratch: Path | None = None,
    schema: str = "public",
    results_schema: str | None = None,
    indexes: bool = True,
    workers: int | None = None,
) -> RunReport:
    """Run a mapping with live progress bars and print the summary (shared by ``map`` and ``demo``)."""
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=out, transient=False) as progress:
            report = run_mapping(
                mapping,
                source,
                db,
                vocabulary=vocabulary,
                progress=TableProgress(progress),
                chunks=chunks,
                chunk_mb=chunk_mb,
                scratch=scratch,
                schema=schema,
                results_schema=results_schema,
                indexes=indexes,
                workers=workers,
            )
    except NothingLoadedError as refused:
        assert refused.report is not None, "NothingLoadedError.of always attaches the run's report"
        print_summary(refused.report, out, committed=False)
        _print_notes(refused.report, out)
        out.print(
            "[red]nothing was loaded[/]: no person, every source record was quarantined (reasons above); the "
            "previous database was kept. Check the files match the mapping's sources (file names, format, "
            "resource type, columns)",
            highlight=False,
        )
        raise typer.Exit(1) from None
    print_summary(report, out)
    _print_notes(report, out)
    return report


def _print_notes(report: RunReport, out: Console) -> None:
    """What the run wants the steward to know beside the counts: chunks, absent files and concepts, ..."""
    if report.chunks > 1:
        out.print(f"mapped in {report.chunks} person-disjoint chunks")
    if report.absent_sources:
        out.print(
            f"sources with no file (0 records; add 'required: true' to a source that must exist): "
            f"{', '.join(report.absent_sources)}",
            highlight=False,
        )
    if report.unread_files:
        out.print(
            f"[yellow]files no source reads[/] (their resources are quarantined: rename a file to match a source's "
            f"files: pattern, or map its resource type): {', '.join(report.unread_files)}",
            highlight=False,
        )
    if report.unknown_vocabularies:
        out.print(
            f"[yellow]vocabulary id(s) neither in the loaded vocabulary nor in the site's source_to_concept_map[/]: "
            f"{', '.join(report.unknown_vocabularies)}; every code of those rules mapped to concept 0 (a site "
            "vocabulary before its concept map exists: see fedomop codes review; otherwise correct the id)",
            highlight=False,
        )
    if report.absent_concepts:
        out.print(
            f"[yellow]the vocabulary lacks {len(report.absent_concepts)} concept(s) the mapping names[/] "
            f"({', '.join(report.absent_concepts)}): their names are unchecked and the rows carrying them fail "
            "DQD's foreign-key checks; load a vocabulary that holds them (a full Athena release, or --vocabulary)",
            highlight=False,
        )
    if report.values_shortened:
        out.print(
            f"{report.values_shortened} value(s) longer than their OMOP column were loaded in a recorded short form "
            "(prefix~hash); the whole values are in fedomop_shortened",
            highlight=False,
        )
    if report.unsplit_reason:
        out.print(
            f"[yellow]warning:[/] mapped whole, not in chunks ({report.unsplit_reason}): memory grew with the site"
        )


def register(app: typer.Typer) -> None:
    @app.command("map")
    def map_command(
        mapping: Annotated[Path, typer.Option(help="Site mapping YAML (mappings/<site>.yaml).")],
        source: Annotated[Path, typer.Option(help="Folder with the site's extract files.")],
        db: Annotated[
            str,
            typer.Option(
                help="Target database URL or DuckDB file path (replaced atomically; an existing file fedomop did "
                "not create is refused)."
            ),
        ],
        vocabulary: Annotated[
            Path | None, typer.Option(help="Vocabulary folder (overrides the mapping's vocabulary.folder).")
        ] = None,
        chunks: Annotated[
            int | None,
            typer.Option(min=1, help="Map in this many person-disjoint chunks (default: one per --chunk-mb)."),
        ] = None,
        chunk_mb: Annotated[
            int,
            typer.Option(min=1, help="MiB of source text per chunk: bounds memory (peak about 0.5 GiB + 12x this)."),
        ] = DEFAULT_CHUNK_MB,
        scratch: Annotated[
            Path | None, typer.Option(help="Folder for the split sources of a chunked run (default: system temp).")
        ] = None,
        schema: Annotated[
            str, typer.Option(help="PostgreSQL: schema for the OMOP CDM tables (OHDSI's cdm schema).")
        ] = "public",
        results_schema: Annotated[
            str | None,
            typer.Option(
                help="PostgreSQL: schema for fedomop's run tables (quarantine, reconciliation; default: --schema)."
            ),
        ] = None,
        indexes: Annotated[
            bool,
            typer.Option(
                help="Create the official OMOP CDM v5.4 DDL indexes after the load (PostgreSQL also clusters); "
                "--no-indexes skips them, e.g. for a throw-away database."
            ),
        ] = True,
        workers: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Processes building the chunks of a chunked run (DuckDB; default 1: two were not faster on a busy 2-core machine). "
                "The database is the same whatever the number; 1 builds them in turn.",
            ),
        ] = None,
    ) -> None:
        """Harmonize a site extract into OMOP CDM v5.4; every record is loaded or quarantined with a reason."""
        report = map_site(
            mapping,
            source,
            db,
            vocabulary,
            chunks=chunks,
            chunk_mb=chunk_mb,
            scratch=scratch,
            schema=schema,
            results_schema=results_schema,
            indexes=indexes,
            workers=workers,
        )
        if not print_coverage(report, load_mapping(mapping)):
            raise typer.Exit(1)
