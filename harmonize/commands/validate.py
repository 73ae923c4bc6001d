"""``fedomop validate``: QA report of a site database, or a comparison of several sites' reports."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.mapping.loader import load_mapping

console = Console()


def load_site_checks(module: str) -> None:
    """Import a site's check module (a dotted name or a .py file) so its ``@register_check`` functions register."""
    path = Path(module)
    if path.suffix == ".py":
        if not path.is_file():
            raise ValidationError("check module not found", where=str(path), fix="pass an existing .py file")
        spec = importlib.util.spec_from_file_location(f"fedomop_site_checks_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ValidationError("cannot import the check module", where=str(path), fix="pass a Python file")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ValidationError(
            f"cannot import check module {module!r}", fix="pass a dotted module name on PYTHONPATH or a .py file"
        ) from exc


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        reports: Annotated[
            list[Path] | None, typer.Argument(help="With --compare: the sites' report.json files.", show_default=False)
        ] = None,
        db: Annotated[str | None, typer.Option(help="Database URL or DuckDB file path to validate.")] = None,
        out: Annotated[Path, typer.Option(help="Folder for report.html + report.json (or comparison.*).")] = Path("qa"),
        compare: Annotated[bool, typer.Option("--compare", help="Compare report.json files instead.")] = False,
        small_cell: Annotated[int, typer.Option(help="Counts below this are shown as '<N'.")] = 10,
        sample_rows: Annotated[int, typer.Option(help="Rows per table for the pandera schema validation.")] = 100_000,
        site: Annotated[str | None, typer.Option(help="Site name in the report (default: database name).")] = None,
        checks: Annotated[
            str | None, typer.Option(help="Comma-separated check names to run (default: all registered).")
        ] = None,
        check_module: Annotated[
            list[str] | None, typer.Option(help="Site check module (dotted name or .py file); repeatable.")
        ] = None,
        factor: Annotated[float, typer.Option(help="--compare: flag medians this many times off.")] = 10.0,
        fail_on_fatal: Annotated[
            bool,
            typer.Option(
                help="Exit 1 when a fatal check fails, coverage is below min_coverage, or the database holds no person."
            ),
        ] = False,
        mapping: Annotated[
            Path | None, typer.Option(help="The site mapping: its min_coverage floors decide the verdict too.")
        ] = None,
        internal: Annotated[
            bool, typer.Option(help="Also write OUT/internal/report.* with exact counts (stays at the site).")
        ] = True,
    ) -> None:
        """Validate an OMOP database (schemas + OHDSI DQD checks) into report.html + report.json, or --compare."""
        if compare:
            _compare(reports or [], out, factor)
            return
        if not db:
            raise typer.BadParameter("give --db URL (or --compare a.json b.json ...)", param_hint="--db")
        from fedomop.harmonize.validate.report import ValidateOptions, validate_database

        for module in check_module or []:
            load_site_checks(module)
        names = tuple(n.strip() for n in checks.split(",") if n.strip()) if checks else None
        floors = load_mapping(mapping).min_coverage if mapping is not None else {}
        options = ValidateOptions(
            small_cell=small_cell, sample_rows=sample_rows, checks=names, site=site, min_coverage=floors
        )
        report = validate_database(db, out, options, internal=internal)
        overview = report.data["overview"]
        status = overview["by_status"]
        console.print(
            f"{report.data['site']}: {overview['checks']:,} checks — {status['pass']:,} pass, {status['fail']:,} fail "
            f"({overview['fatal_failures']} fatal), {status['not_applicable']:,} not applicable, {status['error']} error"
        )
        console.print(
            f"wrote {report.html_path}, {report.json_path} and {report.dqd_path} (OHDSI DQD viewer format); "
            "shareable: small cells withheld"
        )
        if report.internal_html_path:
            console.print(f"internal report (exact counts, stays at the site): {report.internal_html_path}")
        for low in overview["coverage_failures"]:
            console.print(f"coverage of {low['table']} is below min_coverage {low['min_coverage']:.0%}")
        if overview["no_persons"]:
            console.print(
                "[red]the database holds no person[/]: every data check was vacuous (not applicable); map the site "
                "first, or point --db at the site's database",
                highlight=False,
            )
        if fail_on_fatal and (overview["fatal_failures"] or overview["coverage_failures"] or overview["no_persons"]):
            raise typer.Exit(1)

    def _compare(reports: list[Path], out: Path, factor: float) -> None:
        from fedomop.harmonize.validate.compare import compare_reports, write_comparison

        comparison = compare_reports(list(reports), factor=factor)
        json_path, html_path = write_comparison(comparison, out)
        for flag in comparison["flags"]:
            console.print(f"[bold red]flag[/] {flag['site']}: {flag['message']}", highlight=False)
        if not comparison["flags"]:
            console.print("no site disagrees with the others")
        console.print(f"wrote {html_path} and {json_path}")
