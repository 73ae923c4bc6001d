"""The console script ends an interrupt during the CLI's own import with "interrupted" and 130, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

import pytest

from fedomop import entry


class _InterruptedImport:
    """A finder that behaves like a Ctrl-C arriving while ``fedomop.cli`` is being imported."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "fedomop.cli":
            raise KeyboardInterrupt
        return None


def test_interrupt_while_importing_the_cli_exits_130_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "fedomop.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptedImport(), *sys.meta_path])
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    assert exit_.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_the_console_script_is_the_guarded_entry() -> None:
    from importlib.metadata import entry_points

    [script] = [e for e in entry_points(group="console_scripts") if e.name == "fedomop"]
    assert script.value == "fedomop.entry:main"
