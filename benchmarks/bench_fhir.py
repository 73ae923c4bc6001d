"""FHIR reader throughput on the Synthea R4 bulk export: structural fast path vs fhir.resources R4B models.

Measures, on every resource of ../shared/fhir/synthea-bulk-r4/*.ndjson (median of 3 timed runs after warm-up
runs, so both sides have their classes/validators built: the reader is read until its specialised validators
are built -- see settle_reader -- then one warm-up run of each side):

* structural: ``read_fhir(..., validation="structural")`` -- parse + structural check + column extraction
  into polars frames (the columns a mapping typically asks for, see COLUMNS);
* models: ``json.loads`` + ``<R4B model>.model_validate`` for each line, one by one (no column extraction);
* full: ``read_fhir(..., validation="full")`` -- the models plus the same bookkeeping and extraction.

``--big N`` also writes an NDJSON of N x the Encounter file (fresh ids) and reads it structurally, reporting
resources/s and the peak RSS growth, to show memory stays bounded by the selected columns.

``--input DIR`` measures another NDJSON folder instead (e.g. ../shared/fhir/hl7-r4-examples/ndjson, where some
resources are invalid: both sides then refuse them, the reader into its rejects, the models by raising).

Usage: .venv/bin/python benchmarks/bench_fhir.py [--input DIR] [--big 50] [--append docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import SHARED, machine  # noqa: E402
from _common import self_peak_rss_mib as peak_rss_mib  # noqa: E402

from fedomop.harmonize.sources.fhir.reader import read_fhir  # noqa: E402
from fedomop.harmonize.sources.fhir.structure import specialisation  # noqa: E402

SYNTHEA = SHARED / "fhir" / "synthea-bulk-r4"

SUBJECT = {"person": "subject.reference.resolve_id()", "visit": "encounter.reference.resolve_id()"}
COLUMNS: dict[str, dict[str, str]] = {
    "Patient": {
        "gender": "gender",
        "birth": "birthDate",
        "death": "deceasedDateTime",
        "race": "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race')"
        ".extension('ombCategory').valueCoding.code",
    },
    "Condition": {
        **SUBJECT,
        "code": "code.coding.where(system='http://snomed.info/sct').code",
        "start": "onsetDateTime | onsetPeriod.start",
        "end": "abatementDateTime",
    },
    "Encounter": {
        "person": "subject.reference.resolve_id()",
        "class": "class.code",
        "start": "period.start",
        "end": "period.end",
        "provider": "participant.individual.resolve_identifier()",
    },
    "MedicationRequest": {
        **SUBJECT,
        "code": "medicationCodeableConcept.coding.code",
        "start": "authoredOn",
        "quantity": "dispenseRequest.quantity.value",
    },
    "Procedure": {**SUBJECT, "code": "code.coding.code", "start": "performedDateTime | performedPeriod.start"},
    "Immunization": {
        "person": "patient.resolve_id()",
        "code": "vaccineCode.coding.code",
        "start": "occurrenceDateTime",
    },
}
DEFAULT_COLUMNS = {"id": "id"}


def resource_type_of(path: Path) -> str:
    return path.name.split(".")[0]


def run_reader(files: list[Path], validation: str, workers: int = 1) -> int:
    total = 0
    for path in files:
        rtype = resource_type_of(path)
        columns = COLUMNS.get(rtype, DEFAULT_COLUMNS)
        batch = read_fhir(
            rtype, [path], path.parent, rtype, columns, fmt="ndjson", validation=validation, workers=workers
        )
        assert batch.balanced()
        total += batch.seen
    return total


def settle_reader(files: list[Path], most: int = 40) -> int:
    """Read ``files`` until every type's specialised validator is built (see structure.Specialisation): the
    reader notes the elements of the resources it checks and compiles a narrower validator once it has seen
    enough of a type, at the end of a file. On the Synthea export one read is enough; on the HL7 examples a type
    with 1-7 resources a file takes several reads, so the single warm-up left compiling and noting inside the
    timed runs -- a one-time cost, like the first compile, which the warm-up is there to exclude. Returns the
    number of reads."""
    types = {resource_type_of(path) for path in files}
    for count in range(1, most + 1):
        run_reader(files, "structural")
        if not any(specialisation(rtype).learning for rtype in types):
            return count
    return most


def run_models(lines: list[tuple[str, bytes]]) -> int:
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    for rtype, line in lines:
        try:
            get_fhir_model_class(rtype).model_validate(json.loads(line))
        except ValidationError:
            pass  # refused, as the reader refuses it into its rejects
    return len(lines)


def timed(function, *args) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, resources)."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, count


def interleaved_medians(contenders: dict[str, tuple], runs: int = 3) -> dict[str, tuple[float, float, int]]:
    """Median wall and CPU seconds per contender; runs alternate so a busy machine hurts all alike."""
    for function, *args in contenders.values():
        function(*args)  # warm-up: imports, model classes, compiled validators
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, (function, *args) in contenders.items():
            samples[name].append(timed(function, *args))
    return {
        name: (statistics.median(s[0] for s in runs_), statistics.median(s[1] for s in runs_), runs_[0][2])
        for name, runs_ in samples.items()
    }


def big_file(factor: int, directory: Path) -> Path:
    """factor copies of the Synthea Encounters with fresh ids (a valid, larger bulk file)."""
    source = (SYNTHEA / "Encounter.000.ndjson").read_bytes().splitlines()
    path = directory / "Encounter.big.ndjson"
    with path.open("wb") as handle:
        for copy in range(factor):
            for line in source:
                handle.write(line.replace(b'"id":"', f'"id":"c{copy}-'.encode(), 1)[:] + b"\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=0, help="also read N x the Encounter file (memory check)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the --big file")
    parser.add_argument("--append", type=Path, help="append the markdown section to this file")
    parser.add_argument("--input", type=Path, default=SYNTHEA, help="NDJSON folder (default: the Synthea export)")
    args = parser.parse_args()

    files = sorted(args.input.glob("*.ndjson"))
    lines = [(resource_type_of(f), line) for f in files for line in f.read_bytes().splitlines() if line.strip()]
    size_mib = sum(f.stat().st_size for f in files) / 2**20

    start = time.perf_counter()
    run_reader(files, "structural")
    cold = time.perf_counter() - start
    settled = 1 + settle_reader(files)
    results = interleaved_medians(
        {
            "structural fast path + column extraction (`read_fhir`, structural)": (run_reader, files, "structural"),
            "fhir.resources R4B `model_validate`, one by one (json.loads + model)": (run_models, lines),
            "full validation + column extraction (`read_fhir`, full)": (run_reader, files, "full"),
        }
    )
    (structural, models, _full) = results.values()
    load = os.getloadavg()[0]
    out = [
        "",
        "## FHIR reader: structural fast path vs fhir.resources R4B models",
        "",
        f"Input: {args.input.name}, {len(files)} NDJSON files, {structural[2]} resources, {size_mib:.1f} MiB. "
        f"Median of 3 interleaved runs after warm-up runs; single process, one thread of Python. "
        f"Load average at the start: {load:.1f}.",
        f"Machine: {machine()}.",
        "Command: `.venv/bin/python benchmarks/bench_fhir.py"
        + (f" --input {args.input}" if args.input != SYNTHEA else "")
        + (f" --big {args.big}" if args.big else "")
        + "`",
        "",
        "| path | resources/s (wall) | resources/s (CPU) | wall s |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {n / wall:,.0f} | {n / cpu:,.0f} | {wall:.3f} |" for name, (wall, cpu, n) in results.items()],
        "",
        f"Ratio structural / models: **{models[0] / structural[0]:.1f}x** wall-clock, "
        f"**{models[1] / structural[1]:.1f}x** CPU time. First (cold) structural run incl. compiling the per-type "
        f"validators: {cold:.2f} s. Reads before the reader's specialised validators were all built: {settled}.",
    ]
    if args.big:
        with tempfile.TemporaryDirectory() as tmp:
            path = big_file(args.big, Path(tmp))
            before = peak_rss_mib()
            seconds, _cpu, count = timed(run_reader, [path], "structural")
            growth = peak_rss_mib() - before
            parallel, _cpu, _count = timed(run_reader, [path], "structural", args.workers)
            file_mib = path.stat().st_size / 2**20
        out += [
            "",
            f"Large file: {count:,} Encounters ({file_mib:.0f} MiB NDJSON, `--big {args.big}`) read structurally with "
            f"5 columns in {seconds:.2f} s ({count / seconds:,.0f} resources/s, one process); peak RSS grew by "
            f"{growth:.0f} MiB. With `workers={args.workers}` worker processes: {parallel:.2f} s "
            f"({count / parallel:,.0f} resources/s, {seconds / parallel:.2f}x one process).",
        ]
    text = "\n".join(out) + "\n"
    print(text)
    if args.append:
        if not args.append.exists():
            args.append.write_text(f"# Benchmarks\n\nMachine: {machine()}.\n")
        with args.append.open("a") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
