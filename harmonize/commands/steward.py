"""``fedomop profile``, ``draft-mapping``, ``codes review|apply`` and ``mapping doc``: the data steward's tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import DatabaseError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.steward.apply import SiteVocabulary, apply_review, apply_to_mapping
from fedomop.harmonize.steward.codes import review_codes
from fedomop.harmonize.steward.doc import write_mapping_document
from fedomop.harmonize.steward.draft import draft_mapping, relative_folder
from fedomop.harmonize.steward.profile import (
    DEFAULT_MIN_CELL,
    load_profile,
    profile_source,
    read_vocabulary_concepts,
    write_profile,
)

console = Console()
MappingOption = Annotated[Path, typer.Option("--mapping", help="The site mapping YAML.")]
VocabularyOption = Annotated[
    Path | None, typer.Option("--vocabulary", help="Vocabulary folder (CONCEPT.csv ...) to recognise codes with.")
]


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_command(
        source: Annotated[
            Path, typer.Option("--source", help="Folder of the extract (CSV/TSV/Parquet, FHIR NDJSON/Bundles).")
        ],
        out: Annotated[Path, typer.Option("--out", help="Folder for profile.json/.html (+ .shareable).")],
        vocabulary: VocabularyOption = None,
        min_cell: Annotated[int, typer.Option("--min-cell", min=1, help="Small-cell threshold.")] = DEFAULT_MIN_CELL,
    ) -> None:
        """Scan an extract: per column type, null share, distinct count, top values, date range, code system."""
        profile = profile_source(source, vocabulary, min_cell=min_cell)
        written = write_profile(profile, out)
        for file in profile.files:
            coded = [f"{c.name}={c.code_system}" for c in file.columns if c.code_system]
            console.print(
                f"{file.path}: {file.rows:,} rows, {len(file.columns)} columns; codes: {', '.join(coded) or '-'}",
                highlight=False,
            )
        for concept_map in profile.concept_maps:
            console.print(f"{concept_map}: a source_to_concept_map (the steward's), not profiled", highlight=False)
        if profile.fhir is not None:
            types = ", ".join(f"{k} {v:,}" for k, v in sorted(profile.fhir.resources.items()))
            systems = sorted({s.system for s in profile.fhir.codings.values()})
            console.print(f"FHIR resources: {types}; {len(systems)} code systems", highlight=False)
        console.print(f"internal profile (stays at the site): {written['internal']}", highlight=False)
        console.print(f"shareable profile (small cells suppressed): {written['shareable']}", highlight=False)

    @app.command("draft-mapping")
    def draft_command(
        profile: Annotated[Path, typer.Option("--profile", help="profile.json written by fedomop profile.")],
        out: Annotated[Path, typer.Option("--out", help="Mapping YAML to write (e.g. mappings/new_site.yaml).")],
        vocabulary: Annotated[Path, typer.Option("--vocabulary", help="The site's vocabulary folder.")],
        site: Annotated[str | None, typer.Option("--site", help="Site name (default: the file's stem).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    ) -> None:
        """Draft a commented mapping that `fedomop map` runs as it is, with TODOs where it could not decide."""
        if out.exists() and not force:
            console.print(f"{out} exists; pass --force to overwrite it", highlight=False)
            raise typer.Exit(2)
        draft = draft_mapping(
            load_profile(profile),
            site=site or out.stem,
            vocabulary_folder=relative_folder(vocabulary, out),
            concepts=read_vocabulary_concepts(vocabulary),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(draft.text, encoding="utf-8")
        load_mapping(out)  # the draft must load; a failure here is a bug in the drafter, shown as a mapping error
        for table, sources in draft.rules.items():
            console.print(f"{table}: {', '.join(sources)}", highlight=False)
        console.print(f"wrote {out} ({len(draft.todos)} TODO)", highlight=False)

    codes_app = typer.Typer(help="Review unmapped source codes and apply the decisions.", no_args_is_help=True)

    @codes_app.command("review")
    def review_command(
        mapping: MappingOption,
        db: Annotated[str, typer.Option("--db", help="The mapped site database (after fedomop map).")],
        out: Annotated[Path, typer.Option("--out", help="Review sheet CSV to write.")],
        source: Annotated[Path | None, typer.Option("--source", help="The extract: labels of local codes.")] = None,
    ) -> None:
        """List every unmapped source code with its record count and ranked candidate concepts."""
        if "://" not in db and not Path(db).is_file():
            raise DatabaseError("no such database", where=db, fix="run fedomop map first and pass its --db")
        sheet = review_codes(connect(db, read_only=True), load_mapping(mapping), source)
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.write_csv(out)
        records = int(sheet["records"].sum()) if sheet.height else 0
        with_candidate = sheet.filter(sheet["candidate_1_id"].is_not_null()).height
        console.print(
            f"{sheet.height:,} unmapped codes ({records:,} records), {with_candidate:,} with a candidate -> {out}\n"
            "set decision to approve (target_concept_id), local (local_name, local_domain) or skip, then "
            "fedomop codes apply",
            highlight=False,
        )

    @codes_app.command("apply")
    def apply_command(
        review: Annotated[Path, typer.Option("--review", help="The edited review sheet.")],
        mapping: Annotated[
            Path | None,
            typer.Option(
                "--mapping",
                help="The site mapping: the map is written where it reads it, and it is "
                "pointed at the map and extension (with --source).",
            ),  # fmt: skip
        ] = None,
        source: Annotated[Path | None, typer.Option("--source", help="With --mapping: the extract folder.")] = None,
        out: Annotated[
            Path | None, typer.Option("--out", help="Without --mapping: the source_to_concept_map CSV to write.")
        ] = None,
        vocabulary: Annotated[
            Path | None, typer.Option("--vocabulary", help="The site's vocabulary folder (default: the mapping's).")
        ] = None,
        extension: Annotated[
            Path | None, typer.Option("--extension", help="Site vocabulary extension folder (local concepts).")
        ] = None,
        site: Annotated[
            str | None, typer.Option("--site", help="vocabulary_id of local concepts (default: the mapping's site).")
        ] = None,
    ) -> None:
        """Turn approved and local decisions into the site's source_to_concept_map (+ local concepts), used by the
        next fedomop map without editing the mapping by hand."""
        if mapping is not None:
            if source is None:
                raise typer.BadParameter("--mapping needs --source (the extract folder)", param_hint="--source")
            applied, changes = apply_to_mapping(
                review, mapping, source, extension=extension, site=site, vocabulary_folder=vocabulary
            )
        else:
            if out is None or vocabulary is None:
                raise typer.BadParameter("give --mapping and --source, or --out and --vocabulary", param_hint="--out")
            folders = [vocabulary, *([extension] if extension is not None else [])]
            applied = apply_review(
                review, out, vocabulary=SiteVocabulary.read(folders), extension=extension, site=site or "site"
            )
            changes = []
        console.print(
            f"{applied.mapped:,} codes mapped, {applied.local:,} local concepts, {applied.source_concepts:,} local "
            f"source concepts, {applied.skipped:,} left -> {applied.stcm}",
            highlight=False,
        )
        if applied.vocabularies:
            console.print(f"vocabularies added: {', '.join(applied.vocabularies)}", highlight=False)
        for moved in applied.moved:  # domain routing: right for a miscoded test, a mistake for a lab to a Condition
            console.print(f"[yellow]note[/]: {moved}", highlight=False)
        for change in changes:
            console.print(f"{mapping}: {change}", highlight=False)

    app.add_typer(codes_app, name="codes")

    mapping_app = typer.Typer(help="Work with a mapping YAML.", no_args_is_help=True)

    @mapping_app.command("doc")
    def doc_command(
        mapping: MappingOption,
        out: Annotated[Path, typer.Option("--out", help="Markdown file to write.")],
    ) -> None:
        """Write a readable document of a mapping (source field -> OMOP field, rules, units) for ETL review."""
        console.print(f"wrote {write_mapping_document(load_mapping(mapping), out)}", highlight=False)

    app.add_typer(mapping_app, name="mapping")
