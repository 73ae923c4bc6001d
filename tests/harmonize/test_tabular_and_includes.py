"""CSV dialects (latin-1, semicolons, day-first dates, decimal comma), Parquet, and split mappings (include:)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.mapping.models import Source
from fedomop.harmonize.run import run_mapping
from fedomop.harmonize.run.reading import tabular_options
from fedomop.harmonize.sources.tabular import read_tabular
from tests.harmonize.fixture_site import MAPPING, make_site


def test_latin1_semicolon_day_first_and_decimal_comma(tmp_path: Path) -> None:
    (tmp_path / "labs.csv").write_bytes("id;patient;date;result;note\n1;P1;31/12/2019;2,5;élevé\n".encode("latin-1"))
    source = Source(
        format="csv", files="labs.csv", delimiter=";", encoding="latin-1", date_format="%d/%m/%Y", decimal=","
    )
    batch = read_tabular("labs", [tmp_path / "labs.csv"], tmp_path, tabular_options(source))
    assert batch.frame.row(0, named=True) == {
        "id": "1",
        "patient": "P1",
        "date": "31/12/2019",
        "result": "2,5",
        "note": "élevé",
        "_source_file": "labs.csv",
        "_source_row": "1",
    }
    assert batch.balanced() and batch.rejects.is_empty()


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_an_empty_csv_file_among_others_is_a_clear_error(tmp_path: Path, encoding: str) -> None:
    (tmp_path / "a.csv").write_text("id,x\n1,2\n")
    (tmp_path / "b.csv").write_text("")
    source = Source(format="csv", files="*.csv", encoding=encoding)
    with pytest.raises(SourceError, match="the CSV file is empty") as info:
        read_tabular("s", [tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path, tabular_options(source))
    assert info.value.where == "b.csv" and "export it again" in info.value.fix


def test_parquet_source_reads_as_text_with_row_numbers(tmp_path: Path) -> None:
    pl.DataFrame({"id": [1, 2], "value": [1.5, None]}).write_parquet(tmp_path / "x.parquet")
    batch = read_tabular(
        "x", [tmp_path / "x.parquet"], tmp_path, tabular_options(Source(format="parquet", files="*.parquet"))
    )
    assert batch.frame.rows() == [("1", "1.5", "x.parquet", "1"), ("2", None, "x.parquet", "2")]


def test_day_first_site_maps_dates_and_numbers(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path)
    rows = (source / "labs.csv").read_text().splitlines()
    converted = [rows[0].replace(",", ";")] + [
        ";".join(f"{v[8:10]}/{v[5:7]}/{v[0:4]}" if v.count("-") == 2 else v.replace(".", ",") for v in r.split(","))
        for r in rows[1:]
    ]
    (source / "labs.csv").write_bytes("\n".join(converted).encode("latin-1"))
    data = yaml.safe_load(mapping.read_text())
    data["sources"]["labs"].update(delimiter=";", encoding="latin-1", date_format="%d/%m/%Y", decimal=",")
    mapping.write_text(yaml.safe_dump(data))
    db = tmp_path / "site.duckdb"
    run_mapping(mapping, source, db)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "select cast(measurement_date as varchar), value_as_number from measurement "
            "where measurement_concept_id = 3006906 order by 1"
        ).fetchall()
    assert rows == [("2019-02-02", 10.02), ("2019-03-02", 9.1)]


def test_a_mapping_split_per_table_with_include(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path)
    whole = yaml.safe_load(mapping.read_text())
    measurement = {
        "tables": {"measurement": whole["tables"].pop("measurement")},
        "sources": {"labs": whole["sources"].pop("labs")},
        "units": whole.pop("units"),
    }
    (tmp_path / "measurement.yaml").write_text(yaml.safe_dump(measurement))
    whole["include"] = ["measurement.yaml"]
    mapping.write_text(yaml.safe_dump(whole))
    merged = load_mapping(mapping)
    assert set(merged.tables) == set(MAPPING["tables"]) and "labs" in merged.sources and merged.units
    report = run_mapping(mapping, source, tmp_path / "site.duckdb")
    assert report.loaded["measurement"] == 4


def test_an_error_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    mapping, _ = make_site(tmp_path)
    whole = yaml.safe_load(mapping.read_text())
    whole["include"] = ["extra.yaml"]
    mapping.write_text(yaml.safe_dump(whole))
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump({"sources": {"more": {"format": "xlsx", "files": "a"}}}))
    with pytest.raises(MappingError) as error:
        load_mapping(mapping)
    assert "extra.yaml: sources.more.format" in str(error.value)
    assert "'csv', 'parquet', 'fhir_ndjson' or 'fhir_bundle'" in str(error.value)


def test_a_mapping_anywhere_includes_a_shipped_mapping_by_name(tmp_path: Path) -> None:
    """The clarification: a mapping may include the mappings shipped with fedomop, from any folder."""
    site = tmp_path / "site.yaml"
    site.write_text("include: [fhir_r4.yaml]\n")
    merged = load_mapping(site)
    assert {"patients", "observations", "conditions"} <= set(merged.sources)
    assert "measurement" in merged.tables


def test_a_missing_include_names_the_include_not_the_mapping_option(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("include: [nothere.yaml]\n")
    with pytest.raises(MappingError) as error:
        load_mapping(site)
    assert "included mapping 'nothere.yaml' not found" in str(error.value)
    assert f"{site}: include" in str(error.value) and "--mapping" not in str(error.value)
