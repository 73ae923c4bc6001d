"""``fedomop demo``: the whole job on the bundled sample sites: harmonize, validate, report, train federated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedomop.harmonize.ground.resources import SAMPLE_SITES as SITES
from fedomop.harmonize.ground.resources import shipped_mapping, shipped_sample_sites

console = Console()


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option(help="Folder for the site databases and reports.")] = Path("out"),
    ) -> None:
        """Harmonize the four sample sites, validate and report each, train the bone-metastasis study federated."""
        out.mkdir(parents=True, exist_ok=True)
        _map_sites(out)
        _validate_sites(out)
        _train_federated(out)


def _map_sites(out: Path) -> None:
    """Harmonize each sample site (vocabulary + mappings/<site>.yaml) into out/<site>.duckdb, with its summary."""
    from fedomop.harmonize.commands.map import map_site

    sites = sample_sites(out)
    for site in SITES:
        console.rule(f"{site}: fedomop map")
        map_site(shipped_mapping(site), sites / site, str(out / f"{site}.duckdb"), None)


def sample_sites(out: Path) -> Path:
    """The sample sites: those shipped in a checkout, or generated once into ``out/sample_data`` (a wheel)."""
    shipped = shipped_sample_sites()
    if shipped is not None:
        return shipped
    target = out / "sample_data"
    if not all((target / site / "truth_persons.csv").is_file() for site in SITES):
        from fedomop.harmonize.synthetic.generator import generate_sample_data

        console.print(f"generating the four sample sites into {target} (deterministic, as shipped in the repository)")
        generate_sample_data(target)
    return target


def _validate_sites(out: Path) -> None:
    """QA report per site (out/qa/<site>/report.html + .json), then the cross-site comparison."""
    from fedomop.harmonize.validate.compare import compare_reports, write_comparison
    from fedomop.harmonize.validate.report import ValidateOptions, validate_database

    reports: list[dict[str, Any] | str | Path] = []
    for site in SITES:
        report = validate_database(out / f"{site}.duckdb", out / "qa" / site, ValidateOptions(site=site))
        console.print(f"{site}: QA report {report.html_path} ({report.fatal_failures} fatal check failures)")
        if report.json_path is not None:
            reports.append(report.json_path)
    if len(reports) >= 2:
        _, html = write_comparison(compare_reports(reports), out / "qa")
        console.print(f"site comparison: {html}")


def _train_federated(out: Path) -> None:
    """The bone-metastasis study, federated over the four sites, compared with each site alone and pooled."""
    from fedomop.federated.runner import demo_study

    console.rule("federated: bone_metastasis (fedomop train)")
    demo_study([out / f"{site}.duckdb" for site in SITES], out / "federated", console)
