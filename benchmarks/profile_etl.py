"""Profile ``run_mapping`` with pyinstrument and print the hot path (frames above a share of the run).

    .venv/bin/pip install -e '.[bench]'      # pyinstrument, py-spy
    .venv/bin/fedomop sample-data --out /tmp/fedomop_scale/a50k --persons 50000 --sites site_a --no-vocabulary
    .venv/bin/python benchmarks/profile_etl.py --source /tmp/fedomop_scale/a50k/site_a

``--html FILE`` also writes pyinstrument's interactive page. The profile is of wall time in the
Python frames; polars and DuckDB work on their own threads shows up under the Python call that waits.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mapping", type=Path, default=REPO / "mappings" / "site_a.yaml")
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--share", type=float, default=0.02, help="hide frames under this share of the run")
    parser.add_argument("--html", type=Path)
    parser.add_argument("--chunks", type=int, help="person-disjoint chunks (default: by size, as fedomop map)")
    args = parser.parse_args()

    from pyinstrument import Profiler

    from fedomop.harmonize.run import run_mapping

    profiler = Profiler(interval=0.005)
    with tempfile.TemporaryDirectory() as tmp:
        profiler.start()
        report = run_mapping(args.mapping, args.source, str(Path(tmp) / "site.duckdb"), chunks=args.chunks)
        profiler.stop()
    print(
        f"{report.records_read:,} records -> {report.rows_loaded:,} OMOP rows in {report.seconds:.1f} s "
        f"({report.chunks} chunk(s))"
    )
    print(profiler.output_text(color=False, show_all=False, processor_options={"filter_threshold": args.share}))
    if args.html:
        args.html.write_text(profiler.output_html(), encoding="utf-8")


if __name__ == "__main__":
    main()
