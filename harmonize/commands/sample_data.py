"""``fedomop sample-data``: write the four synthetic cancer centres (and their vocabulary subset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedomop.harmonize.synthetic.codebook import SITES
from fedomop.harmonize.synthetic.generator import DEFAULT_PERSONS, DEFAULT_SEED, generate_sample_data

console = Console()


def _site_list(values: list[str] | None) -> list[str]:
    """Accept --sites site_a --sites site_b as well as --sites site_a,site_b."""
    if not values:
        return list(SITES)
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def register(app: typer.Typer) -> None:
    @app.command("sample-data")
    def sample_data(
        out: Annotated[Path, typer.Option(help="Folder to write (site folders are replaced).")] = Path("sample_data"),
        seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same bytes.")] = DEFAULT_SEED,
        persons: Annotated[int, typer.Option(help="Persons in total, shared between the sites by weight.")] = (
            DEFAULT_PERSONS
        ),
        sites: Annotated[list[str] | None, typer.Option(help="Sites to write (default: all four).")] = None,
        eunomia: Annotated[
            Path | None,
            typer.Option(
                help="Build the vocabulary subset from this Eunomia shard instead of copying the shipped one."
            ),
        ] = None,
        vocabulary: Annotated[bool, typer.Option(help="Also write the vocabulary subset.")] = True,
        workers: Annotated[int, typer.Option(help="Sites generated in parallel processes.")] = 1,
    ) -> None:
        """Generate the sample sites deterministically (streamed: any --persons runs in bounded memory)."""
        report = generate_sample_data(
            out,
            seed=seed,
            persons=persons,
            sites=_site_list(sites),
            eunomia_dir=eunomia,
            vocabulary=vocabulary,
            workers=workers,
        )
        for site, count in report.persons.items():
            console.print(f"{site}: {count} persons -> {out / site}")
