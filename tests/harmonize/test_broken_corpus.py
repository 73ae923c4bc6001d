"""Every entry of the broken-input corpus (tests/harmonize/broken_corpus) through the CLI entry point ``main()``:
the expected exit code, the expected message or quarantine reason, never a traceback, never a secret."""

from __future__ import annotations

import copy
import signal
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.harmonize.broken_corpus import CASES, Case
from tests.harmonize.fixture_site import MAPPING, make_site


def _write_inputs(case: Case, tmp: Path) -> tuple[Path, Path]:
    mapping_file, source = make_site(tmp)
    for name, content in case.files.items():
        (source / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if case.setup:
        case.setup(tmp, source)
    if case.mapping_text is not None:
        mapping_file.write_bytes(case.mapping_text.encode("utf-8", "surrogateescape"))
    elif case.edit:
        mapping = copy.deepcopy(MAPPING)
        case.edit(mapping)
        mapping_file.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return mapping_file, source


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from fedomop import cli
    from fedomop.harmonize.commands import map as map_command

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    widths = (cli.err_console.width, map_command.console.width)
    cli.err_console.width = map_command.console.width = 1000  # no wrapping inside a path or a message
    saved = sys.argv
    sys.argv = ["fedomop", *argv]
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    finally:
        sys.argv = saved
        cli.err_console.width, map_command.console.width = widths
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    captured = capsys.readouterr()
    code = exit_.value.code if isinstance(exit_.value.code, int) else 1
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mapping, source = _write_inputs(case, tmp_path)
    db = (case.db or "{tmp}/site.duckdb").format(tmp=tmp_path)
    args = case.args or ["map", "--mapping", "{mapping}", "--source", "{source}", "--db", "{db}"]
    argv = [a.format(tmp=tmp_path, mapping=mapping, source=source, db=db) for a in args]
    code, output = _run_main(argv, capsys)
    text = " ".join(output.split())
    assert "Traceback" not in output and "internal error" not in output, output[-3000:]
    assert code == case.code, (code, text[-2000:])
    assert case.message in text, text[-2000:]
    assert case.never not in output
    if case.absent:
        assert not Path(case.absent.format(tmp=tmp_path)).exists()
    if case.reason or case.clean:
        with duckdb.connect(db, read_only=True) as con:
            rows = con.execute("select source, reason from fedomop_quarantine").fetchall()
            balanced = con.execute("select bool_and(balanced) from fedomop_reconciliation").fetchone()[0]
        assert balanced
        if case.reason:
            name, reason = case.reason
            assert any(s == name and reason in r for s, r in rows), rows
        if case.clean:
            assert [r for s, r in rows if s == case.clean] == []


def test_yaml_merge_key_override_is_not_a_duplicate(tmp_path: Path) -> None:
    """``<<: *anchor`` followed by a key of the block's own is YAML's override, not a key written twice."""
    from fedomop.harmonize.mapping.loader import read_mapping_dict

    path = tmp_path / "m.yaml"
    path.write_text("site: x\ncommon: &c {format: csv, files: a.csv}\nsources:\n  a: {<<: *c, files: b.csv}\n")
    data, _ = read_mapping_dict(path)
    assert data["sources"]["a"] == {"format": "csv", "files": "b.csv"}
