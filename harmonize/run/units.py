"""Unit harmonisation: convert numeric results to the standard UCUM unit the mapping declares, with its factors.

Conversions are data (the mapping's ``units:`` list). A rule for one analyte (``concept``) wins over a generic
rule for a unit; a value in a unit the analyte's rule does not know, or outside the declared plausible range, is
quarantined rather than loaded with a wrong magnitude.
"""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import MappingError, VocabularyError
from fedomop.harmonize.mapping.models import UnitConversion
from fedomop.harmonize.vocabulary import standard_concept_by_code

_TABLE_SCHEMA = {
    "_conv_concept": pl.Int64,
    "_unit_code": pl.String,
    "_factor": pl.Float64,
    "_standard": pl.String,
    "_standard_concept": pl.Int64,
    "_low": pl.Float64,
    "_high": pl.Float64,
}


def _concept_id(db: Database, vocabulary: str, code: str, where: str) -> int:
    try:
        return standard_concept_by_code(db, vocabulary, code)
    except VocabularyError as exc:
        raise MappingError(
            exc.message, where=where, fix=exc.fix or "use a code present in the site vocabulary"
        ) from None


class UnitConverter:
    """Vectorised conversion of ``_value``/``_unit_source_value`` given the row's standard ``_concept_id``."""

    def __init__(self, db: Database, conversions: list[UnitConversion], mapping_file: str) -> None:
        rows: list[dict[str, object]] = []
        for index, conv in enumerate(conversions):
            where = f"{mapping_file}: units[{index}]"
            standard_id = _concept_id(db, "UCUM", conv.standard, f"{where}.standard")
            concept = (
                _concept_id(db, conv.concept.vocabulary, conv.concept.code, f"{where}.concept")
                if conv.concept
                else None
            )
            low, high = conv.range if conv.range else (None, None)
            for unit, factor in {conv.standard: 1.0, **conv.factors}.items():
                rows.append(
                    {
                        "_conv_concept": concept,
                        "_unit_code": unit,
                        "_factor": factor,
                        "_standard": conv.standard,
                        "_standard_concept": standard_id,
                        "_low": low,
                        "_high": high,
                    }
                )
        table = pl.DataFrame(rows, schema=_TABLE_SCHEMA)
        self.specific = table.filter(pl.col("_conv_concept").is_not_null())
        self.generic = (
            table.filter(pl.col("_conv_concept").is_null()).drop("_conv_concept").unique("_unit_code", keep="first")
        )
        self.known_concepts = set(self.specific.get_column("_conv_concept").to_list())
        self.ucum = (
            db.query(
                "SELECT concept_code AS _unit_code, concept_id AS _ucum_concept FROM concept "
                "WHERE vocabulary_id = 'UCUM' AND invalid_reason IS NULL"
            )
            .with_columns(pl.col("_ucum_concept").cast(pl.Int64))
            .unique("_unit_code", keep="first")
        )

    def apply(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Returns (converted rows, rows to quarantine with a ``_reason`` column)."""
        if frame.is_empty():
            return frame, frame.with_columns(pl.lit(None, pl.String).alias("_reason"))
        keys = ["_concept_id", "_unit_code"]
        # the conversion of each distinct (analyte, unit) - a few hundred - is worked out once, then joined to the
        # rows by their two key columns only (joining the rows themselves gathered every column of millions)
        per_pair = self._conversions(frame.select(keys).unique())
        found = frame.select(keys).join(per_pair, on=keys, how="left", maintain_order="left", nulls_equal=True)
        converted = frame.with_columns(found.drop(keys).get_columns()).with_columns(
            (pl.col("_value") * pl.col("_f")).round(6).fill_null(pl.col("_value")).alias("_value")
        )
        no_factor = pl.col("_rule_without_factor") & pl.col("_value").is_not_null()
        out_of_range = pl.col("_value").is_not_null() & (
            (pl.col("_value") < pl.col("_lo")) | (pl.col("_value") > pl.col("_hi"))
        )
        reason = (
            pl.when(no_factor)
            .then(
                pl.format(
                    "no conversion: unit '{}' has no factor declared for this concept",
                    pl.col("_unit_code").fill_null("(none)"),
                )
            )
            .when(out_of_range)
            .then(pl.format("implausible value: outside the declared range {}..{} {}", "_lo", "_hi", "_std"))
        )
        checked = converted.with_columns(reason.alias("_reason"))
        helper = [c for c in checked.columns if c not in frame.columns and c not in ("_reason", "_unit_concept_id")]
        bad = checked.filter(pl.col("_reason").is_not_null()).drop(helper)
        good = checked.filter(pl.col("_reason").is_null()).drop(helper, "_reason")
        return good, bad

    def _conversions(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """Per distinct (``_concept_id``, ``_unit_code``): the factor ``_f`` (null: none), the unit's concept, the
        plausible range ``_lo``..``_hi`` in the standard unit ``_std``, and whether the analyte has rules but none
        for this unit (``_rule_without_factor``). An analyte's own rule wins over a generic rule for the unit."""
        joined = pairs.join(
            self.specific,
            left_on=["_concept_id", "_unit_code"],
            right_on=["_conv_concept", "_unit_code"],
            how="left",
        )
        generic = self.generic.rename({c: f"{c}_g" for c in self.generic.columns if c != "_unit_code"})
        joined = joined.join(generic, on="_unit_code", how="left").join(self.ucum, on="_unit_code", how="left")
        has_specific_rule = pl.col("_concept_id").is_in(list(self.known_concepts))
        factor = pl.coalesce("_factor", pl.when(~has_specific_rule).then(pl.col("_factor_g")))
        return joined.select(
            "_concept_id",
            "_unit_code",
            factor.alias("_f"),
            # CDM v5.4 (measurement/observation.unit_concept_id): no unit in the source -> NULL; a unit given but
            # not mapped -> 0
            pl.when(pl.col("_unit_code").is_not_null())
            .then(
                pl.coalesce(
                    pl.when(factor.is_not_null()).then(pl.coalesce("_standard_concept", "_standard_concept_g")),
                    "_ucum_concept",
                    pl.lit(0, pl.Int64),
                )
            )
            .alias("_unit_concept_id"),
            pl.coalesce("_low", pl.when(~has_specific_rule).then(pl.col("_low_g"))).alias("_lo"),
            pl.coalesce("_high", pl.when(~has_specific_rule).then(pl.col("_high_g"))).alias("_hi"),
            pl.coalesce("_standard", "_standard_g").alias("_std"),
            (has_specific_rule & pl.col("_factor").is_null()).alias("_rule_without_factor"),
        ).unique(["_concept_id", "_unit_code"], keep="first", maintain_order=True)
