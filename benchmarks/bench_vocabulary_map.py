"""``fedomop map`` of one site against a small and a big vocabulary, stores reused, interleaved rounds.

The question (issue 18): does the size of the vocabulary release slow every run down? Each vocabulary's site
store (``<db>.vocabulary``) is built once first (``ensure_store``, not timed); then every round maps the site
once with each vocabulary (the real CLI, ``--no-indexes``, as child processes: wall, CPU of the tree from
``wait4``, peak RSS sampled), so both see the same machine load. Medians are reported with their ratio.

    .venv/bin/python benchmarks/bench_vocabulary_map.py --site-dir /tmp/a100k/site_a \
        --big /tmp/athena1/vocabulary --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FEDOMOP, REPO, TreeRun, load_average, machine, median, run_monitored  # noqa: E402

from fedomop.harmonize.vocabulary.store import ensure_store  # noqa: E402


def _map(site_dir: Path, db: Path, vocabulary: Path) -> TreeRun:
    db.unlink(missing_ok=True)
    command = [FEDOMOP, "map", "--mapping", str(REPO / "mappings" / "site_a.yaml"), "--source", str(site_dir),
               "--db", str(db), "--no-indexes", "--vocabulary", str(vocabulary)]  # fmt: skip
    run = run_monitored(command)
    if run.returncode:
        raise SystemExit(run.stdout[-3000:])
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site-dir", type=Path, required=True)
    parser.add_argument("--small", type=Path, default=REPO / "sample_data" / "vocabulary")
    parser.add_argument("--big", type=Path, required=True, help="e.g. gen_athena_vocabulary.py --scale 1 output")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fedomop_vocab_map_"))
    work.mkdir(parents=True, exist_ok=True)
    vocabularies = {"sample subset": args.small, "Athena size": args.big}
    for label, folder in vocabularies.items():
        ensure_store(work / f"{label.replace(' ', '_')}.duckdb", folder)  # built once, as a first run would
    load_before = load_average()
    runs: dict[str, list[TreeRun]] = {label: [] for label in vocabularies}
    for _ in range(args.rounds):
        for label, folder in vocabularies.items():
            runs[label].append(_map(args.site_dir, work / f"{label.replace(' ', '_')}.duckdb", folder))
    lines = [
        f"`fedomop map --no-indexes` of {args.site_dir}, stores reused; median of {args.rounds} interleaved rounds; "
        f"1-min load average {load_before:.1f} before, {load_average():.1f} after (2 CPUs).",
        "",
        "| vocabulary | wall s | CPU s | peak RSS MiB (tree) |",
        "|---|---:|---:|---:|",
    ]
    for label, done in runs.items():
        lines.append(
            f"| {label} | {median([r.seconds for r in done]):.1f} | {median([r.cpu_seconds for r in done]):.1f} | "
            f"{median([r.peak_rss_mib for r in done]):,.0f} |"
        )
    small, big = runs["sample subset"], runs["Athena size"]
    lines += [
        "",
        f"Athena size / subset: {median([r.seconds for r in big]) / median([r.seconds for r in small]):.2f}x wall, "
        f"{median([r.cpu_seconds for r in big]) / median([r.cpu_seconds for r in small]):.2f}x CPU (target <= 1.2x).",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/bench_vocabulary_map.py {' '.join(sys.argv[1:])}`",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
