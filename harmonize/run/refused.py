"""Persons whose row was refused when its file was read, so their records can say so.

A person row with the wrong number of fields or an undecodable byte never reaches the rules (the reader
quarantines it with its reason), so the person is absent and each of their visits and events would be
quarantined as "unknown person", which sends a steward looking for a person the extract does hold. The
refused line still shows the person's id where the header puts it: records pointing at that id are quarantined
as "person quarantined: <the line's reason> (its row, refused when read)" instead (no file or row in the
reason: reasons are counted across sites; the record's value is the person id, which finds the row). A FHIR
Patient refused when read (``birthDate: "19500312"``) is found by the resource id its reject row carries, when the
person rule's key is the Patient's ``id``: its records say "person quarantined: <the reader's reason> (<element>)",
as for a person the rules refuse. An id the line or resource does not show leaves "unknown person".
"""

from __future__ import annotations

import csv

import polars as pl

from fedomop.harmonize.mapping.models import Mapping
from fedomop.harmonize.run.files import SiteFiles
from fedomop.harmonize.run.reading import tabular_options
from fedomop.harmonize.sources.tabular import read_header

REFUSED_SCHEMA = {"_key": pl.String(), "_refused": pl.String()}


def persons_refused_at_read(mapping: Mapping, files: SiteFiles, rejects: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """(_key, _refused) for each refused row of a person source whose id column the line still shows."""
    keys: list[str] = []
    reasons: list[str] = []
    for rule in mapping.tables.get("person", []):
        source = mapping.sources.get(rule.source)
        refused = rejects.get(rule.source)
        if source is None or not rule.id or refused is None or not refused.height:
            continue
        if source.is_fhir:
            columns = source.columns if isinstance(source.columns, dict) else {}
            if columns.get(rule.id, "").strip() == "id":
                for key, reason in _fhir_refused(refused):
                    keys.append(key)
                    reasons.append(reason)
            continue
        options = tabular_options(source)
        for (file,), rows in refused.group_by("source_file", maintain_order=True):
            path = files.source_dir / str(file)
            header = read_header(path, options) if path.is_file() else []
            if rule.id not in header:
                continue
            position = header.index(rule.id)
            for row in rows.iter_rows(named=True):
                fields = next(csv.reader([row["value"] or ""], delimiter=options.delimiter), [])
                if position < len(fields) and fields[position].strip():
                    keys.append(fields[position].strip())
                    why = str(row["reason"]).split(";")[0]  # the reason, without the reader's advice
                    reasons.append(f"{why} (its row, refused when read)")
    return pl.DataFrame({"_key": keys, "_refused": reasons}, schema=REFUSED_SCHEMA)


def _fhir_refused(refused: pl.DataFrame) -> list[tuple[str, str]]:
    """(Patient id, "<reason> (<element>)") of each refused resource whose reject row carries its id: a
    ``source_row`` without ':' (a row the reader could not name by id is "file:line", and ':' is no id character in
    FHIR). A duplicate id is left out: the first resource of that id was loaded."""
    found: list[tuple[str, str]] = []
    for row in refused.iter_rows(named=True):
        key, reason = str(row["source_row"] or ""), str(row["reason"] or "")
        if not key or ":" in key or reason.startswith("duplicate id"):
            continue
        why = reason.split(";")[0]  # the reason, without the reader's advice
        found.append((key, f"{why} ({row['field'] or 'its resource, refused when read'})"))
    return found
