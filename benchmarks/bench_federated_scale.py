"""Federated scale-out: the same persons as 4 sites and as 20 sites, in simulation and on a real deployment.

Generates the four sample sites at ``--persons`` (default 22,400 = 4x the shipped sample), maps each with
``run_mapping``, then splits every site database into ``--split`` person-disjoint databases (rows of every
table with a ``person_id`` kept where ``hash(person_id) % split == part``), so 4 sites become 20 with the
same persons in all. Each mode of ``bench_federated.py`` then trains once on the 4 sites and once on the 20,
in Flower's simulation engine (one Ray actor per site), and the table shows time and bytes per round and
AUROC (federated, pooled, best site alone) side by side.

Histogram XGBoost needs every site inside XGBoost's federated allreduce at once, which the simulation engine
cannot give past min(32, CPUs + 4) sites. With ``--engine auto`` (the default) it therefore runs -- on 4 and on
20 sites, so both sizes are compared in the same engine -- on a real deployment on 127.0.0.1
(:class:`fedomop.federated.deploy.LocalDeployment`: one SuperLink, one SuperNode process per site, ``flwr run``
submitted by :func:`fedomop.federated.runner.run_deployment`, which checks the run's final status), while the other
modes stay in simulation; ``--engine simulation`` / ``--engine deployment`` force one engine for every mode.
On a deployment the pooled reference is trained here from the same site files, as ``simulate`` does, and
the peak memory (summed RSS and PSS) of the whole deployment process tree is sampled every 0.2 s.

Usage: .venv/bin/python benchmarks/bench_federated_scale.py [--persons 22400] [--split 5] [--engine auto]
       [--modes xgboost-hist ...] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FEDOMOP, REPO, append_docs, load_average, machine, rss_and_pss  # noqa: E402
from bench_federated import MODES, result_row, run_mode  # noqa: E402

from fedomop.federated.client_app import NO_POLICY  # noqa: E402
from fedomop.federated.deploy import LocalDeployment  # noqa: E402
from fedomop.federated.runner import pooled_reference, run_deployment, site_list  # noqa: E402
from fedomop.federated.server_app import RunSettings  # noqa: E402
from fedomop.federated.study import STUDIES_DIR, parse_study  # noqa: E402
from fedomop.federated.testing import approving_policies  # noqa: E402

STUDY = STUDIES_DIR / "bone_metastasis.yaml"

SITES = ("site_a", "site_b", "site_c", "site_d")
# Flower's simulation engine dispatches messages to ClientApps from a ThreadPoolExecutor with the default
# max_workers (vce_api.run_api), so at most min(32, CPUs + 4) ClientApps run at once.
SIMULATION_CONCURRENCY = min(32, (os.cpu_count() or 1) + 4)
HIST_LIMIT = (
    f"histogram XGBoost needs every site inside XGBoost's federated allreduce at the same time, but the "
    f"simulation runs at most {SIMULATION_CONCURRENCY} ClientApps at once on this machine (min(32, CPUs + 4)), "
    "so the other sites never join and the run waits for XGBoost's 600 s timeout (--engine auto or deployment "
    "runs it on real SuperNodes instead)"
)


def generate_and_map(persons: int, folder: Path) -> list[Path]:
    from fedomop.harmonize.run import run_mapping

    extract = folder / "extract"
    subprocess.run(
        [FEDOMOP, "sample-data", "--out", str(extract), "--persons", str(persons), "--no-vocabulary"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    paths = []
    for site in SITES:
        path = folder / f"{site}.duckdb"
        run_mapping(REPO / "mappings" / f"{site}.yaml", extract / site, str(path))
        paths.append(path)
    shutil.rmtree(extract)
    return paths


def split_by_person(db: Path, parts: int, folder: Path) -> list[Path]:
    """``parts`` copies of a site database, each keeping a person-disjoint share of the clinical rows."""
    import duckdb

    out = []
    for part in range(parts):
        path = folder / f"{db.stem}_{part}.duckdb"
        shutil.copy(db, path)
        con = duckdb.connect(str(path))
        tables = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT table_name FROM duckdb_columns() WHERE column_name = 'person_id'"
            ).fetchall()
        ]
        for table in tables:
            con.execute(f'DELETE FROM "{table}" WHERE hash(person_id) % {parts} <> {part}')
        # each part is a site of its own: its own identity (training refuses one site given twice)
        con.execute(
            "UPDATE cdm_source SET cdm_source_abbreviation = cdm_source_abbreviation || ?, "
            "cdm_source_name = cdm_source_name || ?",
            [f"_{part}", f" (part {part})"],
        )
        con.execute("CHECKPOINT")
        con.close()
        out.append(path)
    return out


def split_sites(sites: list[Path], parts: int, folder: Path) -> list[Path]:
    """Every site split ``parts`` ways by person (``split_by_person``), into ``folder``."""
    folder.mkdir()
    return [part for db in sites for part in split_by_person(db, parts, folder)]


def person_counts(paths: list[Path]) -> list[int]:
    import duckdb

    counts = []
    for path in paths:
        con = duckdb.connect(str(path), read_only=True)
        counts.append(con.execute("SELECT COUNT(*) FROM person").fetchone()[0])
        con.close()
    return counts


def program(process: psutil.Process) -> str:
    """A Flower process by the program it runs (``flower-supernode``, ``flwr-clientapp``, ...)."""
    command = process.cmdline()
    scripts = [Path(part).name for part in command[:2] if "flwr" in part or "flower" in part]
    return scripts[-1] if scripts else process.name()


class TreePeak:
    """Samples the summed RSS/PSS of some processes and all their descendants until stopped (a thread).

    At the peak it keeps the breakdown by program: {program: [processes, RSS bytes, PSS bytes]}.
    """

    def __init__(self, processes: list[subprocess.Popen], interval: float = 0.2) -> None:
        self.processes, self.interval = processes, interval
        self.peak_rss = self.peak_pss = self.peak_count = 0
        self.breakdown: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            by_program: dict[str, list[int]] = {}
            for popen in list(self.processes):
                try:
                    root = psutil.Process(popen.pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for process in tree:
                    try:
                        rss, pss = rss_and_pss(process)
                        entry = by_program.setdefault(program(process), [0, 0, 0])
                    except psutil.Error:
                        continue
                    entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + rss, entry[2] + pss
            rss = sum(e[1] for e in by_program.values())
            if rss > self.peak_rss:
                self.peak_rss, self.breakdown = rss, by_program
            self.peak_pss = max(self.peak_pss, sum(e[2] for e in by_program.values()))
            self.peak_count = max(self.peak_count, sum(e[0] for e in by_program.values()))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_deployed(label: str, options: dict, sites: list[Path], out: Path, isolation: str = "executor") -> dict:
    """One mode on a real SuperLink + one SuperNode process per site on 127.0.0.1, plus the pooled reference.

    ``isolation``: ``executor`` runs each site as ``fedomop site start`` does (governed: policy, approval check,
    fedomop's executor with its fork server); ``subprocess`` is Flower's stock SuperNode without governance, which
    starts a fresh ``flwr-clientapp`` interpreter per message."""
    names = {p.stem: str(p) for p in sites}
    started = time.perf_counter()
    workdir = out / f"deploy-{label.replace('/', '-')}-{isolation}"
    governed = isolation == "executor"
    policies = approving_policies(list(names), workdir / "policies", STUDY) if governed else dict.fromkeys(names, NO_POLICY)
    # in-memory SuperLink state: with a state file, 20 SuperNodes on 2 busy CPUs got "database is locked" (see deploy.py)
    hub = LocalDeployment(workdir, names, policies=policies, persistent_state=False, executors=governed)
    with TreePeak(hub.processes) as peak:
        try:
            hub.start()
            startup_s = hub.wait_until_online()
            result = run_deployment(
                STUDY,
                hub.connection,
                out=out / f"{label.replace('/', '-')}-{isolation}",
                flwr_home=hub.flwr_home,
                min_nodes=len(sites),
                timeout_s=3600,
                **options,
            )
        except Exception:
            print(hub.logs()[-8000:], flush=True)
            raise
        finally:
            hub.stop()
    study_text = STUDY.read_text(encoding="utf-8")
    settings = RunSettings(study_text=study_text, min_nodes=len(sites), **options)
    study = parse_study(study_text, source=str(STUDY))
    result["pooled"], result["pooled_summary"] = pooled_reference(study, site_list(sites), settings)
    row = result_row(label, options, result, time.perf_counter() - started)
    row.update(
        engine=f"deployment ({isolation})",
        startup_s=startup_s,
        peak_rss_mib=peak.peak_rss / 2**20,
        peak_pss_mib=peak.peak_pss / 2**20,
        peak_processes=peak.peak_count,
        peak_by_program={k: [n, round(r / 2**20), round(q / 2**20)] for k, (n, r, q) in peak.breakdown.items()},
        exchange_seconds={f"{r['message_type']} {r['number']}": r["seconds"] for r in result["faults"]["rounds"]},
    )
    return row


def uses_deployment(engine: str, model: str) -> bool:
    return engine == "deployment" or (engine == "auto" and model == "xgboost-hist")


def markdown(rows: list[dict], persons: int, command: str, loads: tuple[float, float], sizes: dict) -> str:
    lines = [
        f"Same {persons:,} generated persons as 4 sites (persons per site {sizes[4]}) and as {len(sizes[20])} sites "
        f"(each site split {len(sizes[20]) // len(sizes[4])} ways by person; {min(sizes[20])}-{max(sizes[20])} "
        "persons per site). One run per "
        f"cell; 1-min load average {loads[0]:.1f} before / {loads[1]:.1f} after.",
        "",
        "| mode | engine | sites | Flower rounds | train s | s / round | bytes / round | AUROC federated "
        "| AUROC pooled | AUROC best site alone | wall s | load before / after | peak RSS / PSS (MiB), processes "
        "| SuperNodes online after s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        memory = (
            f"{r['peak_rss_mib']:,.0f} / {r['peak_pss_mib']:,.0f}, {r['peak_processes']}"
            if "peak_rss_mib" in r
            else "-"
        )
        startup = f"{r['startup_s']:.1f}" if "startup_s" in r else "-"
        lines.append(
            f"| {r['mode']} | {r['engine']} | {r['sites']} | {r['flower_rounds']} | {r['train_s']:.1f} | "
            f"{r['s_per_round']:.2f} | {r['bytes_per_round']:,.0f} | {r['auroc_federated']:.3f} | "
            f"{r['auroc_pooled']:.3f} | {r['auroc_local_best']:.3f} | {r['wall_s']:.0f} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} | {memory} | {startup} |"
        )
    for r in rows:
        if "peak_by_program" in r:
            exchanges = ", ".join(f"{k} {v:.1f} s" for k, v in r["exchange_seconds"].items())
            memory = ", ".join(
                f"{k}: {n} processes, {rss:,} MiB RSS ({pss:,} MiB PSS)"
                for k, (n, rss, pss) in r["peak_by_program"].items()
            )
            lines.append(
                f"\n{r['mode']} on {r['sites']} sites ({r['engine']}): exchanges {exchanges}; at the memory peak: {memory}."
            )
    lines += ["", f"Machine: {machine()}.", f"Command: `{command}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=22_400)
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--modes", nargs="*", default=["xgboost-hist", "xgboost-bagging", "mlp/fedavg"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[4, 20], choices=(4, 20), help="site counts to run")
    parser.add_argument(
        "--engine",
        choices=("auto", "simulation", "deployment"),
        default="auto",
        help="auto: histogram XGBoost on a real deployment on 127.0.0.1 (4 and 20 sites), the rest in simulation",
    )
    parser.add_argument(
        "--isolation",
        nargs="*",
        choices=("executor", "subprocess"),
        default=["executor"],
        help="deployments: executor = governed sites as `fedomop site start` runs them; subprocess = Flower's "
        "stock SuperNode (a fresh flwr-clientapp per message, no governance); both: side by side",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    rows: list[dict] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        four = generate_and_map(args.persons, folder)
        twenty = split_sites(four, args.split, folder / "split")
        sizes = {4: person_counts(four), 20: person_counts(twenty)}
        load_before = load_average()
        for label, options in MODES:
            if label not in args.modes:
                continue
            deployed = uses_deployment(args.engine, options["model"])
            for sites in [s for size, s in ((4, four), (20, twenty)) if size in args.sizes]:  # 20: the split set
                if not deployed and options["model"] == "xgboost-hist" and len(sites) > SIMULATION_CONCURRENCY:
                    print(f"skipped {label} on {len(sites)} sites: {HIST_LIMIT}", flush=True)
                    skipped.append(f"{label} on {len(sites)} sites")
                    continue
                for isolation in args.isolation if deployed else [None]:
                    started, load = time.perf_counter(), load_average()
                    if isolation:
                        row = run_deployed(label, options, sites, folder / f"out{len(sites)}", isolation)
                    else:
                        row = run_mode(label, options, sites, folder / f"out{len(sites)}")
                        row.update(engine="simulation")
                    row.update(sites=len(sites), wall_s=time.perf_counter() - started, load=(load, load_average()))
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "result"}, default=str), flush=True)
        load_after = load_average()
    command = " ".join([".venv/bin/python benchmarks/bench_federated_scale.py", *sys.argv[1:]])
    section = markdown(rows, args.persons, command, (load_before, load_after), sizes)
    if skipped:
        section += f"\n\nNot run: {', '.join(skipped)}: {HIST_LIMIT}."
    print(section)
    if args.write_docs:
        append_docs(f"## Federated scale-out in simulation: 4 vs 20 sites ({time.strftime('%Y-%m-%d')})\n\n{section}")


if __name__ == "__main__":
    main()
