"""``fedomop codes apply``: the steward's reviewed sheet becomes the site's source_to_concept_map and vocabulary
extension, written where the mapping reads them, so the next ``fedomop map`` uses them as they are.

Rows decided ``approve`` map the source code to an existing standard concept; ``local`` rows get a new standard
concept of the site's own vocabulary. Following the CDM conventions (OMOP_CDMv5.4_Field_Level.csv):

* site concepts take ids above 2,000,000,000 (the range reserved for site-specific codes and mappings);
* ``source_to_concept_map.source_concept_id`` is 0 or such a site concept: a code of a vocabulary the release
  does not have (a hospital's own lab codes) gets a non-standard source concept in that local vocabulary;
* ``source_vocabulary_id`` and ``target_vocabulary_id`` refer to VOCABULARY, so each local vocabulary gets a
  VOCABULARY row, whose required ``vocabulary_concept_id`` is a concept of its own (domain Metadata, vocabulary
  "Vocabulary", class "Vocabulary", code "OMOP generated", as the released vocabularies have).

Everything goes to an extension folder that composes with the bundled or Athena vocabulary; nothing is copied.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from fedomop.harmonize.ground.errors import MappingError, VocabularyError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.steward.mapping_edit import wire_vocabulary
from fedomop.harmonize.tables import DOMAIN_TABLES
from fedomop.harmonize.vocabulary.cdm_io import cdm_csv_files, read_cdm_csv

LOCAL_CONCEPT_START = 2_000_000_001
DECISIONS = ("", "approve", "local", "skip")
VALID = {"valid_start_date": "1970-01-01", "valid_end_date": "2099-12-31", "invalid_reason": None}
STCM_COLUMNS = ("source_code", "source_concept_id", "source_vocabulary_id", "source_code_description",
                "target_concept_id", "target_vocabulary_id", "valid_start_date", "valid_end_date", "invalid_reason")  # fmt: skip
VOCABULARY_ID_LENGTH = 20  # varchar(20) in the CDM


@dataclass(frozen=True)
class SiteVocabulary:
    """What the site's vocabulary already holds: the release folder plus its extensions."""

    concepts: pl.DataFrame  # concept_id, vocabulary_id, standard_concept, invalid_reason, domain_id
    vocabularies: frozenset[str]  # every vocabulary_id known, release and extensions
    release: frozenset[str]  # those of the first folder (the bundled or Athena vocabulary)

    @classmethod
    def read(cls, folders: list[Path]) -> SiteVocabulary:
        concepts, vocabularies, release = [], set(), frozenset[str]()
        for folder in folders:
            files = cdm_csv_files(folder) if folder.is_dir() else {}
            if "concept" in files:
                frame = read_cdm_csv(files["concept"], "concept", error=VocabularyError)
                concepts.append(
                    frame.select(
                        pl.col("concept_id").cast(pl.Int64),
                        "vocabulary_id",
                        "standard_concept",
                        "invalid_reason",
                        "domain_id",
                    )
                )
                vocabularies |= set(frame["vocabulary_id"].drop_nulls())
            if "vocabulary" in files:
                vocabularies |= set(read_cdm_csv(files["vocabulary"], "vocabulary")["vocabulary_id"].drop_nulls())
            release = release or frozenset(vocabularies)
        if not concepts:
            raise VocabularyError(
                "no CONCEPT.csv in the site vocabulary", where=str(folders[0]), fix="point at the vocabulary folder"
            )
        return cls(pl.concat(concepts, how="vertical_relaxed"), frozenset(vocabularies), release)


@dataclass
class Applied:
    mapped: int  # source_to_concept_map rows to existing standard concepts
    local: int  # local standard concepts created
    skipped: int  # rows left undecided or skipped
    stcm: Path
    extension: Path | None
    source_concepts: int = 0  # non-standard concepts for codes of local source vocabularies
    vocabularies: list[str] = field(default_factory=list)  # VOCABULARY rows added
    # approved codes whose target's domain routes their rows to another table than the one they sit in now
    moved: list[str] = field(default_factory=list)


def _read_review(path: Path) -> pl.DataFrame:
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise MappingError(f"cannot read the review sheet: {exc}", where=str(path)) from None
    needed = ("source_vocabulary_id", "source_code", "decision", "target_concept_id")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise MappingError(
            f"not a review sheet: no column {missing[0]}", where=str(path), fix="use fedomop codes review's CSV"
        )
    return frame.with_columns(pl.col("decision").fill_null("").str.strip_chars().str.to_lowercase())


def _check_decisions(frame: pl.DataFrame, path: Path) -> None:
    for line, row in enumerate(frame.iter_rows(named=True), start=2):
        decision = row["decision"]
        if decision not in DECISIONS:
            raise MappingError(f"decision {decision!r} is not one of approve, local, skip (or blank)",
                               where=f"{path} line {line}, field decision", fix="correct the decision")  # fmt: skip
        target = (row["target_concept_id"] or "").strip()
        if decision == "approve" and not target.isdigit():
            problem = (
                f"target_concept_id {target!r} is not a concept id (a number)"
                if target
                else ("an approved row needs a target_concept_id")
            )
            raise MappingError(problem, where=f"{path} line {line}, field target_concept_id",
                               fix="copy a candidate_N_id, or choose decision local")  # fmt: skip
        if decision == "local" and not (row.get("local_name") or "").strip():
            raise MappingError("a local concept needs a local_name", where=f"{path} line {line}, field local_name",
                               fix="name the site's concept")  # fmt: skip
        domain = (row.get("local_domain") or "").strip()
        if decision in ("approve", "local") and domain and domain not in DOMAIN_TABLES:
            raise MappingError(
                f"local_domain {domain!r} is not an OMOP domain whose records fedomop loads",
                where=f"{path} line {line}, field local_domain",
                fix=f"use one of {', '.join(sorted(DOMAIN_TABLES))} (it decides the table the records go to)",
            )


def _target_vocabularies(frame: pl.DataFrame, concepts: pl.DataFrame, path: Path) -> dict[int, str]:
    """Each approved target's vocabulary; a target must be a valid standard concept, as in a source_to_concept_map
    (OHDSI's Usagi offers only those): a map to a non-standard or upgraded concept would load rows the DQD's
    isStandardValidConcept check fails, while the run's coverage counted them as mapped."""
    known = {row[0]: row[1:] for row in concepts.select("concept_id", "vocabulary_id", "standard_concept",
                                                         "invalid_reason").iter_rows()}  # fmt: skip
    found: dict[int, str] = {}
    for line, row in enumerate(frame.iter_rows(named=True), start=2):
        if row["decision"] != "approve":
            continue
        target = int(row["target_concept_id"])
        where = f"{path} line {line}, field target_concept_id"
        if target not in known:
            raise VocabularyError(f"target_concept_id {target} is not in the site vocabulary", where=where,
                                  fix="copy a candidate_N_id, or load the vocabulary that has it")  # fmt: skip
        vocabulary, standard, invalid = known[target]
        if standard != "S" or invalid:
            state = f"standard_concept {standard or 'empty'}" + (f", invalid_reason {invalid}" if invalid else "")
            raise VocabularyError(f"target_concept_id {target} is not a valid standard concept ({state})",
                                  where=where, fix="map to a standard concept: a candidate_N_id, or the concept this "
                                  "one 'Maps to' in the vocabulary (CONCEPT_RELATIONSHIP)")  # fmt: skip
        found[target] = str(vocabulary)
    return found


def _read_tsv(path: Path) -> pl.DataFrame | None:
    return pl.read_csv(path, separator="\t", infer_schema=False) if path.exists() else None


def _concept(concept_id: int, *, name: str, domain: str, vocabulary: str, klass: str, standard: str | None,
             code: str) -> dict[str, object]:  # fmt: skip
    return {"concept_id": concept_id, "concept_name": name[:255], "domain_id": domain, "vocabulary_id": vocabulary,
            "concept_class_id": klass, "standard_concept": standard, "concept_code": code[:50], **VALID}  # fmt: skip


class _Ids:
    """Site concept ids: the extension's own for a (vocabulary, code) it already has (applying a sheet twice
    creates nothing twice), else new ones in order above its highest."""

    def __init__(self, extension: Path | None) -> None:
        existing = _read_tsv(extension / "CONCEPT.csv") if extension is not None else None
        self.next = LOCAL_CONCEPT_START
        self.known: dict[tuple[str, str], int] = {}
        if existing is not None and existing.height:
            ids = existing["concept_id"].cast(pl.Int64)
            top = ids.max()  # None only if every id is blank
            self.next = max(LOCAL_CONCEPT_START, (top if isinstance(top, int) else 0) + 1)
            self.known = {
                (v, c): int(i) for v, c, i in zip(existing["vocabulary_id"], existing["concept_code"], ids, strict=True)
            }

    def take(self) -> int:
        self.next += 1
        return self.next - 1

    def concept(  # noqa: PLR0913 (the concept's own fields)
        self, concepts: list[dict[str, object]], vocabulary: str, code: str, *, name: str, domain: str, klass: str,
        standard: str | None,
    ) -> int:  # fmt: skip
        """The id of the site concept (vocabulary, code), adding it to ``concepts`` when the extension lacks it."""
        if (vocabulary, code) not in self.known:
            self.known[(vocabulary, code)] = self.take()
            concepts.append(_concept(self.known[(vocabulary, code)], name=name, domain=domain, vocabulary=vocabulary,
                                     klass=klass, standard=standard, code=code))  # fmt: skip
        return self.known[(vocabulary, code)]


def _check_vocabulary_id(vocabulary_id: str, where: str) -> None:
    if not vocabulary_id or len(vocabulary_id) > VOCABULARY_ID_LENGTH:
        raise MappingError(f"vocabulary_id {vocabulary_id!r} must have 1 to {VOCABULARY_ID_LENGTH} characters",
                           where=where, fix="pass a shorter --site (the site's vocabulary_id)")  # fmt: skip


def apply_review(
    review: Path, stcm: Path, *, vocabulary: SiteVocabulary, extension: Path | None = None, site: str = "site"
) -> Applied:
    """Merge the approved/local decisions of a review sheet into the source_to_concept_map CSV ``stcm`` (rows for
    the same source code are replaced, others kept) and write local concepts and vocabularies to ``extension``.

    An approved target must be in the site vocabulary (its vocabulary_id is copied into the map), so a typo in a
    concept id fails here, with its line, not at the next run.
    """
    review = Path(review)
    frame = _read_review(review)
    _check_decisions(frame, review)
    vocabulary_of = _target_vocabularies(frame, vocabulary.concepts, review)
    decided = frame.filter(pl.col("decision").is_in(["approve", "local"]))
    has_local = decided.filter(pl.col("decision") == "local").height > 0
    if has_local and extension is None:
        raise MappingError("the sheet has local decisions but no extension folder was given",
                           where=str(review), fix="pass --extension FOLDER (the site's vocabulary extension)")  # fmt: skip
    if has_local:
        _check_vocabulary_id(site, "--site")
    ids = _Ids(extension)
    concepts: list[dict[str, object]] = []
    targets: dict[str, int] = {}  # source code of a local decision -> its standard site concept
    for row in decided.filter(pl.col("decision") == "local").iter_rows(named=True):
        domain = (row.get("local_domain") or "Observation").strip()
        targets[row["source_code"]] = ids.concept(concepts, site, row["source_code"], name=row["local_name"].strip(),
                                                  domain=domain, klass="Undefined", standard="S")  # fmt: skip
    local_sources = sorted({v for v in decided["source_vocabulary_id"].drop_nulls() if v not in vocabulary.release})
    source_ids: dict[tuple[str, str], int] = {}
    if extension is not None:  # a code of a vocabulary the release lacks becomes a site source concept
        for row in decided.filter(pl.col("source_vocabulary_id").is_in(local_sources)).iter_rows(named=True):
            _check_vocabulary_id(row["source_vocabulary_id"], f"{review}: source_vocabulary_id")
            key = (row["source_vocabulary_id"], row["source_code"])
            name = row.get("source_name") or row.get("local_name") or row["source_code"]
            domain = (row.get("local_domain") or "Observation").strip()
            source_ids[key] = ids.concept(concepts, *key, name=name, domain=domain, klass="Undefined", standard=None)
    new_vocabularies = [v for v in ([site] if has_local else []) + local_sources if v not in vocabulary.vocabularies]
    if extension is not None and (concepts or new_vocabularies):
        vocabulary_rows = _vocabulary_rows(new_vocabularies, extension, site, ids, concepts)
        _write_extension(extension, concepts, vocabulary_rows)
    else:
        vocabulary_rows = []
    stcm_rows = []
    for row in decided.iter_rows(named=True):
        local = row["decision"] == "local"
        target = targets[row["source_code"]] if local else int(row["target_concept_id"])
        stcm_rows.append({
            "source_code": row["source_code"],
            "source_concept_id": source_ids.get((row["source_vocabulary_id"], row["source_code"]), 0),
            "source_vocabulary_id": row["source_vocabulary_id"],
            "source_code_description": row.get("source_name") or "", "target_concept_id": target,
            "target_vocabulary_id": site if local else vocabulary_of[target], **VALID,
        })  # fmt: skip
    _merge_stcm(Path(stcm), stcm_rows)
    return Applied(
        mapped=decided.height - len(targets),
        local=len(targets),
        skipped=frame.height - decided.height,
        stcm=Path(stcm),
        extension=extension if concepts else None,
        source_concepts=len(source_ids),
        vocabularies=[str(r["vocabulary_id"]) for r in vocabulary_rows],
        moved=_moved_by_domain(decided, vocabulary.concepts),
    )


def _moved_by_domain(decided: pl.DataFrame, concepts: pl.DataFrame) -> list[str]:
    """Approved codes whose target belongs to another table's domain: the next run routes their records there
    (docs/mapping.md, domain routing) - right for a diagnosis code that is really a lab test, a silent loss of
    result values when a lab code is approved to a Condition by mistake. Said, not refused."""
    if "omop_table" not in decided.columns:
        return []
    domains = dict(concepts.select("concept_id", "domain_id").iter_rows())
    moved = []
    for row in decided.filter(pl.col("decision") == "approve").iter_rows(named=True):
        target = int(row["target_concept_id"])
        table = DOMAIN_TABLES.get(str(domains.get(target)))
        if table is not None and row["omop_table"] in DOMAIN_TABLES.values() and table != row["omop_table"]:
            records = f", {row['records']} records" if row.get("records") else ""
            moved.append(f"{row['source_code']} ({row['omop_table']}{records}) -> concept {target}, a "
                         f"{domains[target]} concept: its records will load into {table}")  # fmt: skip
    return moved


def _vocabulary_rows(
    names: list[str], extension: Path, site: str, ids: _Ids, concepts: list[dict[str, object]]
) -> list[dict[str, object]]:
    """A VOCABULARY row (and its Metadata concept) for each local vocabulary the extension does not list yet."""
    listed = _read_tsv(extension / "VOCABULARY.csv")
    have = set(listed["vocabulary_id"]) if listed is not None else set()
    rows = []
    for name in (n for n in names if n not in have):
        concept_id = ids.take()
        title = f"{site} site concepts" if name == site else f"{name} (local source codes of {site})"
        concepts.append(_concept(concept_id, name=title, domain="Metadata", vocabulary="Vocabulary",
                                 klass="Vocabulary", standard=None, code="OMOP generated"))  # fmt: skip
        rows.append({"vocabulary_id": name, "vocabulary_name": title[:255],
                     "vocabulary_reference": "site-defined, reviewed with fedomop codes apply",
                     "vocabulary_version": dt.date.today().isoformat(), "vocabulary_concept_id": concept_id})  # fmt: skip
    return rows


def _append_tsv(path: Path, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    frame = pl.DataFrame(rows).select(pl.all().cast(pl.String))
    existing = _read_tsv(path)
    if existing is not None:
        frame = pl.concat([existing, frame], how="diagonal")
    frame.write_csv(path, separator="\t")


def _write_extension(extension: Path, concepts: list[dict[str, object]], vocabularies: list[dict[str, object]]) -> None:
    """Append concepts and vocabularies to the extension's CONCEPT.csv / VOCABULARY.csv (tab-separated, Athena)."""
    if any(int(str(c["concept_id"])) < LOCAL_CONCEPT_START for c in concepts):
        raise VocabularyError("local concept ids must be above 2,000,000,000", where=str(extension))
    extension.mkdir(parents=True, exist_ok=True)
    _append_tsv(extension / "CONCEPT.csv", concepts)
    _append_tsv(extension / "VOCABULARY.csv", vocabularies)


def _merge_stcm(path: Path, rows: list[dict[str, object]]) -> None:
    """The reviewed rows replace earlier rows for the same (source vocabulary, code); the rest are kept."""
    new = pl.DataFrame([{k: (None if v is None else str(v)) for k, v in r.items()} for r in rows],
                       schema={c: pl.String for c in STCM_COLUMNS})  # fmt: skip
    if path.exists():
        old = pl.read_csv(path, infer_schema=False)
        kept = old.join(new.select("source_vocabulary_id", "source_code"), on=["source_vocabulary_id", "source_code"],
                        how="anti", nulls_equal=True)  # fmt: skip
        new = pl.concat([kept, new], how="diagonal")
    path.parent.mkdir(parents=True, exist_ok=True)
    new.write_csv(path)


def apply_to_mapping(
    review: Path,
    mapping_path: Path,
    source_dir: Path,
    *,
    extension: Path | None = None,
    site: str | None = None,
    vocabulary_folder: Path | None = None,
) -> tuple[Applied, list[str]]:
    """Apply a review where the mapping will read it: the map goes to the mapping's ``source_to_concept_map``
    (``source_to_concept_map.csv`` in the extract folder when it names none), local concepts to its first
    extension (``<site>_vocabulary`` beside the mapping when it lists none), and the mapping is pointed at both.
    Returns the result and the lines of the mapping that changed; the edited mapping must still load."""
    mapping = load_mapping(mapping_path)
    base = Path(mapping_path).parent
    extensions = [(base / e).resolve() for e in mapping.vocabulary.extensions]
    folder = vocabulary_folder or (base / mapping.vocabulary.folder)
    target = Path(extension) if extension is not None else (extensions[0] if extensions else None)
    target = target or base / f"{mapping.site}_vocabulary"
    stcm_name = mapping.vocabulary.source_to_concept_map or "source_to_concept_map.csv"
    stcm = (Path(source_dir) / stcm_name).resolve()
    if not stcm.is_relative_to(Path(source_dir).resolve()):
        raise MappingError("the source_to_concept_map is outside the extract folder",
                           where=f"{mapping_path}: vocabulary.source_to_concept_map", fix="name a file in it")  # fmt: skip
    vocabulary = SiteVocabulary.read([folder, *extensions, *([target] if target not in extensions else [])])
    applied = apply_review(review, stcm, vocabulary=vocabulary, extension=target, site=site or mapping.site)
    wired = Path(target).resolve()
    try:
        relative = wired.relative_to(base.resolve()).as_posix()
    except ValueError:
        relative = wired.as_posix()  # outside the mapping's folder: the absolute path
    original = Path(mapping_path).read_text(encoding="utf-8")
    changes = wire_vocabulary(
        Path(mapping_path),
        source_to_concept_map=stcm_name,
        extension=relative if (wired / "CONCEPT.csv").exists() else None,
    )
    try:
        load_mapping(mapping_path)
    except MappingError:
        Path(mapping_path).write_text(original, encoding="utf-8")  # leave the steward's file as it was
        raise
    return applied, changes
