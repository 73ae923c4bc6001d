"""Checks of a parsed mapping against the CDM spec, the table modules and the source headers.

All of this runs before any data row is read, so a typo in a mapping costs seconds, not a half-loaded site.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl
from pydantic import BaseModel

from fedomop.harmonize.cdm import load_spec
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.mapping.models import (
    CodeExpr,
    ColumnExpr,
    ConceptConstant,
    ConceptFieldExpr,
    ConceptRef,
    ConstantExpr,
    DateExpr,
    MapExpr,
    Mapping,
    Rule,
    WideColumn,
)
from fedomop.harmonize.run.files import SiteFiles
from fedomop.harmonize.run.reading import tabular_options
from fedomop.harmonize.sources.tabular import read_header
from fedomop.harmonize.tables import DOMAIN_TABLES, MAPPABLE_TABLES, TARGETS
from fedomop.harmonize.tables._target import RULE_SLOTS


def _choices(values: Iterable[object]) -> str:
    return ", ".join(str(v) for v in values)


def rule_columns(rule: Rule) -> Iterator[tuple[str, str]]:
    """(key path inside the rule, source column) for every source column the rule reads."""
    for key in ("id", "person", "visit", "provider", "care_site", "location"):
        if getattr(rule, key):
            yield key, getattr(rule, key)
    if rule.when:
        for index, column in enumerate(rule.when.columns()):
            yield "when.column" if index == 0 else f"when.and[{index - 1}].column", column
    if rule.concept:
        for key in ("code", "vocabulary_column", "system_column", "source_value", "text", "codings"):
            if getattr(rule.concept, key):
                yield f"concept.{key}", getattr(rule.concept, key)
    for key in ("start", "end"):
        if getattr(rule, key):
            yield f"{key}.date", getattr(rule, key).date
    if rule.value:
        yield "value.number", rule.value.number
        if rule.value.unit:
            yield "value.unit", rule.value.unit
        if rule.value.text:
            yield "value.text", rule.value.text
    for column, wide in (rule.unpivot or {}).items():
        yield f"unpivot.{column}", column
        if wide.unit_column:
            yield f"unpivot.{column}.unit_column", wide.unit_column
    for name, expr in rule.fields.items():
        if isinstance(expr, ColumnExpr):
            yield f"fields.{name}.column", expr.column
        elif isinstance(expr, DateExpr):
            yield f"fields.{name}.date", expr.date
        elif isinstance(expr, MapExpr):
            yield f"fields.{name}.map", expr.map
        elif isinstance(expr, ConceptFieldExpr):
            yield f"fields.{name}.concept", expr.concept
            for key in ("vocabulary_column", "system_column", "codings"):
                if getattr(expr, key):
                    yield f"fields.{name}.{key}", getattr(expr, key)


def _check_rule(mapping: Mapping, file: str, table: str, index: int, rule: Rule) -> None:
    where = f"{file}: tables.{table}[{index}]"
    target = TARGETS[table]
    if rule.source not in mapping.sources:
        raise MappingError(
            f"unknown source {rule.source!r}", where=f"{where}.source", fix=f"use one of: {_choices(mapping.sources)}"
        )
    used = {k for k in rule.model_fields_set if k not in ("source",)}
    extra = sorted(used - target.allowed_rule_keys)
    if extra:
        raise MappingError(
            f"{table} rules take no {extra[0]!r}",
            where=f"{where}.{extra[0]}",
            fix=f"valid keys for {table}: {_choices(sorted(target.allowed_rule_keys))}",
        )
    given = {k for k in target.required_rule_keys if getattr(rule, k) is not None}
    if rule.unpivot is not None:
        given.add("concept")  # each unpivoted column carries its own code
    missing = [k for k in target.required_rule_keys if k not in given]
    if missing:
        raise MappingError(
            f"required key {missing[0]!r} is missing",
            where=where,
            fix=f"{table} rules need {_choices(target.required_rule_keys)}",
        )
    spec = load_spec().table(table)
    slot_columns = {
        target.columns[slot]
        for key in rule.model_fields_set - {"id"}  # a field may override the *_source_value the id gives
        for slot in RULE_SLOTS.get(key, ())
        if slot in target.columns
    }
    routed_only = _routed_only_columns(table, rule.route_by_domain)
    for name, expr in rule.fields.items():
        if name in routed_only:  # e.g. value_as_string on a measurement rule: set where a row lands in observation
            _check_named_constant(expr, name, f"{where}.fields.{name}")
            continue
        if name not in spec.column_names or name == target.id_column or name in slot_columns:
            valid = [c for c in spec.column_names if c != target.id_column and c not in slot_columns]
            raise MappingError(
                f"{table} has no settable field {name!r}",
                where=f"{where}.fields.{name}",
                fix=f"valid fields: {_choices(valid)}",
            )
        _check_named_constant(expr, name, f"{where}.fields.{name}")
    if rule.type_concept is not None:
        _check_named_constant(rule.type_concept, "type_concept_id", f"{where}.type_concept")


def _routed_only_columns(table: str, route_by_domain: bool) -> set[str]:
    """Columns a rule of ``table`` may set although ``table`` lacks them: those of the other tables its rows
    can be routed to by domain (value_as_string exists in observation, not in measurement). Such a field
    applies only to the rows routed there, as every field follows a routed row into a table with that column."""
    if not route_by_domain or TARGETS[table].domain is None:
        return set()
    own = set(load_spec().table(table).column_names)
    others: set[str] = set()
    for name in set(DOMAIN_TABLES.values()) - {table}:
        target = TARGETS[name]
        others |= {c for c in load_spec().table(name).column_names if c != target.id_column} - set(
            target.columns.values()
        )
    return others - own


def _check_named_constant(expr: object, field: str, where: str) -> None:
    if (
        isinstance(expr, ConstantExpr)
        and field.endswith("concept_id")
        and expr.constant not in (0, None)
        and not expr.name
    ):
        raise MappingError(
            f"hard-coded concept id {expr.constant} has no name",
            where=where,
            fix=f"write {{constant: {expr.constant}, name: <concept_name>}} so reviewers can read it",
        )


def check_mapping(mapping: Mapping, mapping_file: Path) -> None:
    """Structure checks that need no source data: tables, rule keys, fields, named constants, unused sources."""
    file = str(mapping_file)
    used_sources: set[str] = set()
    for table, rules in mapping.tables.items():
        if table not in MAPPABLE_TABLES:
            raise MappingError(
                f"{table!r} is not a table a rule can fill",
                where=f"{file}: tables.{table}",
                fix=f"use one of: {_choices(MAPPABLE_TABLES)}",
            )
        for index, rule in enumerate(rules):
            _check_rule(mapping, file, table, index, rule)
            used_sources.add(rule.source)
    for name, source in mapping.sources.items():
        for item in source.lookup:
            if item.source not in mapping.sources:
                raise MappingError(
                    f"lookup: source {item.source!r} is not defined",
                    where=f"{file}: sources.{name}.lookup",
                    fix=f"use one of: {_choices(mapping.sources)}",
                )
            used_sources.add(item.source)
    unused = sorted(set(mapping.sources) - used_sources)
    if unused:
        raise MappingError(
            f"source {unused[0]!r} is not used by any rule (its records would be unaccounted for)",
            where=f"{file}: sources.{unused[0]}",
            fix="add a rule that reads it, or remove the source",
        )
    for constant, where in _named_constants(mapping, file):
        _check_named_constant(constant, "concept_id", where)
    for table in mapping.min_coverage:  # a misspelt table would only fail after the whole site was mapped
        if table not in MAPPABLE_TABLES:
            raise MappingError(
                f"min_coverage names {table!r}, which is not an OMOP table a rule can fill",
                where=f"{file}: min_coverage.{table}",
                fix=f"use one of: {_choices(MAPPABLE_TABLES)}",
            )
    _check_fhir_paths(mapping, file)


def _check_fhir_paths(mapping: Mapping, file: str) -> None:
    """Every FHIR source's column expressions compile (syntax, element names of the resource type) before any
    data is read; an error names the mapping file and the key (``sources.<name>.columns.<column>``)."""
    from fedomop.harmonize.sources.fhir.path import compile_path
    from fedomop.harmonize.sources.fhir.structure import resource_model

    codings = _codings_columns(mapping)
    for name, source in mapping.sources.items():
        if not source.is_fhir or not isinstance(source.columns, dict):
            continue
        try:
            resource_model(source.resource_type or "")
        except SourceError as error:
            raise MappingError(error.message, where=f"{file}: sources.{name}.resource_type", fix=error.fix) from None
        for column, expression in source.columns.items():
            try:
                path = compile_path(expression, source.resource_type)
            except MappingError as error:
                raise MappingError(
                    error.message, where=f"{file}: sources.{name}.columns.{column}", fix=error.fix
                ) from None
            selects = path.result_type.describe()
            if (name, column) in codings and path.result_type.known and selects != "CodeableConcept":
                raise MappingError(
                    f"column {column!r} is read as a rule's codings (a CodeableConcept), but {expression!r} selects "
                    f"a {selects}",
                    where=f"{file}: sources.{name}.columns.{column}",
                    fix="select the CodeableConcept itself, e.g. code.where(coding[1].exists()) (not code.coding)",
                )


def _codings_columns(mapping: Mapping) -> set[tuple[str, str]]:
    """(source, column) of every column a rule reads as ``codings:`` (its concept's or a concept field's)."""
    found = set()
    for rules in mapping.tables.values():
        for rule in rules:
            if rule.concept is not None and rule.concept.codings:
                found.add((rule.source, rule.concept.codings))
            for expr in rule.fields.values():
                if isinstance(expr, ConceptFieldExpr) and expr.codings:
                    found.add((rule.source, expr.codings))
    return found


def _named_constants(mapping: Mapping, file: str) -> Iterator[tuple[ConstantExpr, str]]:
    if mapping.observation_period:
        yield mapping.observation_period.type_concept, f"{file}: observation_period.type_concept"
    if mapping.episodes:
        yield mapping.episodes.episode_concept, f"{file}: episodes.episode_concept"
        yield mapping.episodes.type_concept, f"{file}: episodes.type_concept"


def check_source_columns(mapping: Mapping, mapping_file: Path, files: SiteFiles) -> None:
    """Every column a rule reads exists in its source: in the header of *every* file of a CSV/Parquet source
    (a second file without the ``unit`` column would otherwise load values without units), or among a FHIR
    source's declared columns. Absent sources (no file) are skipped: they contribute no record."""
    file = str(mapping_file)
    used: dict[str, list[tuple[str, str]]] = {}
    for table, rules in mapping.tables.items():
        for index, rule in enumerate(rules):
            for key, column in rule_columns(rule):
                used.setdefault(rule.source, []).append((f"tables.{table}[{index}].{key}", column))
    for name, source in mapping.sources.items():  # a source's own exclude: conditions read its columns too
        for index, excluded in enumerate(source.exclude):
            for column in excluded.columns():
                used.setdefault(name, []).append((f"sources.{name}.exclude[{index}]", column))
    for name, source in mapping.sources.items():
        if source.is_fhir:
            _check_columns_exist(file, name, "declared columns", set(source.columns or {}), used.get(name, []))
            continue
        options = tabular_options(source)
        for path in files.of(name):
            try:
                header = read_header(path, options)
            except OSError as error:
                raise SourceError(
                    f"cannot read the header: {error.strerror or error}",
                    where=files.relative(path),
                    fix="check that the file is readable",
                ) from None
            if header in ([], [""]) and path.stat().st_size == 0:
                raise SourceError(
                    "the file is empty (0 bytes): it has no header line, so its columns cannot be checked",
                    where=files.relative(path),
                    fix="re-export it; an extract with no records this time should still hold its header line "
                    "(it then loads as 0 records)",
                )
            header_set = set(header)
            repeated = sorted({c for c in header if header.count(c) > 1})
            if repeated:  # the reader would keep one of them: which value a rule reads would be a guess
                raise SourceError(
                    f"the header names column {repeated[0]!r} {header.count(repeated[0])} times",
                    where=files.relative(path),
                    fix="give each column its own name in the file's header (e.g. value, value_2)",
                )
            for declared in source.columns or []:
                if declared not in header_set:
                    raise MappingError(
                        f"column {declared!r} is not in the header of {files.relative(path)}",
                        where=f"{file}: sources.{name}.columns",
                        fix=f"columns in the file: {_choices(sorted(header_set))}",
                    )
            _check_columns_exist(file, name, f"header of {files.relative(path)}", header_set, used.get(name, []))


def _check_columns_exist(file: str, source: str, kind: str, available: set[str], used: list[tuple[str, str]]) -> None:
    for key, column in used:
        if column not in available:
            raise MappingError(
                f"column {column!r} does not exist in source {source!r} ({kind})",
                where=f"{file}: {key}",
                fix=f"{kind}: {_choices(sorted(available))}",
            )


def _named_concepts(mapping: Mapping, mapping_file: Path) -> list[tuple[int, str, str]]:
    """Every hard-coded concept id of the mapping with the name written beside it and where it is written."""
    named: list[tuple[int, str, str]] = []
    file = str(mapping_file)
    for table, rules in mapping.tables.items():
        for index, rule in enumerate(rules):
            exprs: dict[str, object] = {**rule.fields, "type_concept": rule.type_concept}
            for name, expr in exprs.items():
                if isinstance(expr, ConstantExpr) and expr.name and isinstance(expr.constant, int):
                    named.append(
                        (
                            expr.constant,
                            expr.name,
                            f"{file}: tables.{table}[{index}].{name if name == 'type_concept' else 'fields.' + name}",
                        )
                    )
                if isinstance(expr, MapExpr):
                    for value, target in expr.values.items():
                        if isinstance(target, ConceptConstant):
                            named.append(
                                (
                                    target.concept_id,
                                    target.name,
                                    f"{file}: tables.{table}[{index}].fields.{name}.values.{value}",
                                )
                            )
    for expr, where in _named_constants(mapping, file):
        if expr.name and isinstance(expr.constant, int):
            named.append((expr.constant, expr.name, where))
    return named


def _vocabulary_names(db: Database, ids: list[int]) -> dict[int, str]:
    if not ids:
        return {}
    known = db.query(f"SELECT concept_id, concept_name FROM concept WHERE concept_id IN ({', '.join(map(str, ids))})")
    return dict(
        zip(
            known.get_column("concept_id").cast(pl.Int64).to_list(),
            known.get_column("concept_name").to_list(),
            strict=True,
        )
    )


def absent_named_concepts(db: Database, mapping: Mapping, mapping_file: Path) -> list[str]:
    """The mapping's hard-coded concepts the loaded vocabulary lacks, as "id (name)".

    Their names cannot be checked, and every row carrying one fails DQD's foreign-key check: a vocabulary subset
    (Eunomia's, say) lacks e.g. 8507 MALE or 32817 EHR. The run says so instead of passing in silence."""
    named = _named_concepts(mapping, mapping_file)
    names = _vocabulary_names(db, sorted({i for i, _, _ in named if i}))
    return sorted({f"{i} ({name})" for i, name, _ in named if i and i not in names})


def check_concept_names(db: Database, mapping: Mapping, mapping_file: Path) -> None:
    """A hard-coded concept id must carry the vocabulary's name for it (when the vocabulary has that concept);
    so must a concept named by vocabulary and code (a ``units`` analyte, an episode's cancer concept)."""
    named = _named_concepts(mapping, mapping_file)
    names = _vocabulary_names(db, sorted({i for i, _, _ in named if i}))
    for concept_id, name, where in named:
        actual = names.get(concept_id)
        if actual is not None and actual.strip().lower() != name.strip().lower():
            raise MappingError(
                f"concept {concept_id} is {actual!r} in the vocabulary, not {name!r}",
                where=where,
                fix="correct the concept id or its name",
            )
    for ref, where in _concept_refs(mapping, mapping_file):
        found = db.query(
            "SELECT concept_name FROM concept WHERE vocabulary_id = :v AND concept_code = :c",
            {"v": ref.vocabulary, "c": ref.code},
        ).get_column("concept_name")
        if found.len() and all(str(n).strip().lower() != ref.name.strip().lower() for n in found.to_list()):
            raise MappingError(
                f"{ref.vocabulary} {ref.code} is {found[0]!r} in the vocabulary, not {ref.name!r}",
                where=where,
                fix="correct the code or its name",
            )


def _concept_refs(mapping: Mapping, mapping_file: Path) -> list[tuple[ConceptRef, str]]:
    """Every concept the mapping names by vocabulary + code + name, with where it is written."""
    return [(ref, where) for ref, where in _walk(mapping, mapping_file) if isinstance(ref, ConceptRef)]


_FIXES_A_VOCABULARY = (CodeExpr, ConceptFieldExpr, WideColumn, ConceptRef)


def _walk(mapping: Mapping, mapping_file: Path) -> list[tuple[BaseModel, str]]:
    """Every model inside the mapping's rules and site settings, with where it is written (``vocabulary`` and
    ``sources`` left out: a system-URL lookup table and reader options)."""
    found: list[tuple[BaseModel, str]] = []

    def walk(value: object, where: str) -> None:
        if isinstance(value, BaseModel):
            found.append((value, where))
            for name, item in vars(value).items():
                walk(item, f"{where}.{name}")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    for name, value in vars(mapping).items():
        if name not in ("vocabulary", "sources"):
            walk(value, f"{mapping_file}: {name}")
    return found


def _fixed_vocabularies(mapping: Mapping, mapping_file: Path) -> list[tuple[str, str]]:
    """Every vocabulary id the mapping writes for its codes (a rule's code, a concept field, a wide column, a
    concept named by code), with where it is written. ``vocabulary.fhir_systems`` is left out: it is a lookup
    table of system URLs, and a release need not hold every vocabulary it lists."""
    return [
        (model.vocabulary, f"{where}.vocabulary")
        for model, where in _walk(mapping, mapping_file)
        if isinstance(model, _FIXES_A_VOCABULARY) and isinstance(model.vocabulary, str)
    ]


def unknown_vocabulary_ids(db: Database, mapping: Mapping, mapping_file: Path) -> list[str]:
    """The vocabulary ids the mapping writes that the site does not know, as "id (where)"; a near miss of a
    known id stops the run.

    Known: the release's (VOCABULARY, or the vocabulary_id of its concepts, for subsets with an incomplete
    VOCABULARY table) and the source vocabularies of the site's source_to_concept_map. An unknown id maps every
    code of its rule to concept 0. When it is a known id in another case or within one or two letters
    (``loinc``, ``LONIC``, ``ICD10`` for ICD10CM: similarity >= 0.8) it is a typo and a MappingError; otherwise it
    is most likely the site's own vocabulary before its concept map exists (``fedomop draft-mapping`` names
    local codes so; the steward maps them after ``codes review``), which the run reports instead."""
    fixed = _fixed_vocabularies(mapping, mapping_file)
    if not fixed:
        return []
    known = set(
        db.query(
            "SELECT vocabulary_id AS v FROM vocabulary UNION SELECT DISTINCT vocabulary_id FROM concept "
            "UNION SELECT DISTINCT source_vocabulary_id FROM source_to_concept_map"
        )
        .get_column("v")
        .drop_nulls()
        .to_list()
    )
    unknown: list[str] = []
    for vocabulary_id, where in fixed:
        if vocabulary_id in known:
            continue
        near = [v for v in sorted(known) if v.lower() == vocabulary_id.lower()]
        near += difflib.get_close_matches(vocabulary_id, sorted(known), n=3, cutoff=_TYPO_SIMILARITY)
        if near:
            raise MappingError(
                f"vocabulary {vocabulary_id!r} is neither in the loaded vocabulary nor a source vocabulary of the "
                "site's source_to_concept_map: every code of this rule would map to concept 0",
                where=where,
                fix=f"did you mean {', '.join(map(repr, dict.fromkeys(near)))}? vocabulary ids are case-sensitive "
                "(LOINC, SNOMED, ICD10CM); or load a vocabulary that holds it",
            )
        unknown.append(f"{vocabulary_id} ({where.split(': ', 1)[-1]})")
    return sorted(set(unknown))


_TYPO_SIMILARITY = 0.8  # difflib ratio: LONIC/LOINC 0.8, ICD10/ICD10CM 0.83; a local SITE_C_LAB/LOINC is 0.27
