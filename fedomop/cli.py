"""The ``fedomop`` command: a thin typer layer over the library API.

Each command group lives in its own module and is registered here, so the CLI
stays a table of contents. Every :class:`~fedomop.harmonize.ground.errors.FedomopError` is
printed as a clear message (where + fix) with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from rich.markup import escape

from fedomop.harmonize.ground.errors import FedomopError

app = typer.Typer(
    name="fedomop",
    help="Harmonize EHR extracts into OMOP CDM v5.4, validate them, and train federated models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from fedomop import __version__

        typer.echo(f"fedomop {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."
    ),
) -> None:
    """Harmonize EHR extracts into OMOP CDM v5.4, validate them, and train federated models."""


# (module, attribute) of each command registrar; a module registers its commands on `app`.
_COMMAND_MODULES = [
    "fedomop.harmonize.commands.cdm",
    "fedomop.harmonize.commands.vocabulary",
    "fedomop.harmonize.commands.sample_data",
    "fedomop.harmonize.commands.map",
    "fedomop.harmonize.commands.validate",
    "fedomop.harmonize.commands.steward",
    "fedomop.federated.commands.train",
    "fedomop.federated.commands.governance",
    "fedomop.federated.commands.network",
    "fedomop.demo",
]


def _register_commands() -> None:
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that capability is not installed/built yet
            raise
        module.register(app)


_register_commands()


# The optional parts of fedomop and the extra that installs each (pyproject.toml [project.optional-dependencies]).
EXTRA_OF_MODULE = {
    "flwr": "federated",
    "xgboost": "federated",
    "sklearn": "federated",
    "cryptography": "federated",
    "psutil": "federated",
    "torch": "torch",
    "ray": "simulation",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The extra that provides the module an import did not find, if it is one of fedomop's optional parts."""
    top = (error.name or "").split(".")[0]
    return EXTRA_OF_MODULE.get(top)


def main() -> None:
    """Console entry point: run the app and turn typed errors into clear messages and truthful exit codes.

    Exit codes: 0 success, 1 a failed check or run, 2 bad input or usage, 130 interrupted. typer in
    non-standalone mode *returns* a command's exit code (and turns Ctrl-C into 130), so the code is
    passed on here rather than dropped.
    """
    _terminate_as_interrupt()
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        _exit_interrupted()
    except ModuleNotFoundError as error:
        extra = missing_extra(error)
        if extra is None:
            _internal_error(error)
        message = f"this command needs fedomop's {extra!r} extra ({error.name} is not installed)"
        err_console.print(
            f"[bold red]error[/]: {escape(message)}\n  fix: {escape('pip install ' + repr(f'fedomop[{extra}]'))}",
            highlight=False,
        )
        sys.exit(2)
    except FedomopError as error:
        if _SIGNALLED:  # an error the interrupt caused inside the run
            _exit_interrupted()
        err_console.print(f"[bold red]error[/] ({type(error).__name__}): {escape(str(error))}", highlight=False)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        _exit_interrupted()
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if _SIGNALLED:
            _exit_interrupted()
        unreachable = _unreachable_database(exc)
        if unreachable:
            err_console.print(f"[bold red]error[/] (DatabaseError): {escape(unreachable)}", highlight=False)
            sys.exit(2)
        unusable = _unusable_path(exc)
        if unusable:
            err_console.print(f"[bold red]error[/] ({type(exc).__name__}): {escape(unusable)}", highlight=False)
            sys.exit(2)
        _internal_error(exc)
    if _SIGNALLED:  # typer returns 130 for Ctrl-C without a word
        _exit_interrupted()
    if code == 130:  # click turns an EOFError into the same 130: input ended, nobody interrupted
        _internal_error(EOFError("input ended unexpectedly"))
    sys.exit(code if isinstance(code, int) else 0)


_SIGNALLED: list[int] = []  # the signals received: a native library may turn KeyboardInterrupt into its own error


def _exit_interrupted() -> None:
    """Say "interrupted" and exit 130; a further Ctrl-C/SIGTERM while saying it is ignored (no traceback)."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    err_console.print("interrupted", highlight=False)
    sys.exit(130)


def _terminate_as_interrupt() -> None:
    """SIGINT and SIGTERM (a scheduler or ``kill``) unwind as KeyboardInterrupt, so context managers remove their
    temporary files; the signal is remembered because DuckDB re-raises it as ``RuntimeError: Query interrupted``."""
    import signal

    def _raise(signum: int, frame: object) -> None:
        _SIGNALLED.append(signum)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, _raise)
        signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread (an embedding host): leave its handlers alone
        pass


def _unreachable_database(exc: BaseException) -> str | None:
    """A database that cannot be reached (down, wrong host/port/password) is bad input: one line, not a traceback."""
    try:
        import sqlalchemy as sa
    except ModuleNotFoundError:
        return None
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return None
    first = (str(exc.orig) if exc.orig is not None else str(exc)).strip().splitlines()
    reason = first[0] if first else type(exc).__name__
    if "not a valid DuckDB database file" in reason:  # --db notes.txt: a local file, no server involved
        return (
            f"cannot open the database: {reason}\n"
            "  fix: --db names a file that is not a DuckDB database (fedomop leaves it untouched): pass a new file"
            " name or the site's .duckdb file"
        )
    if "Could not set lock on file" in reason:  # DuckDB: one writer per file
        return (
            f"cannot open the database: {reason}\n"
            "  fix: another process holds this DuckDB file open (a notebook, DBeaver, another fedomop run):"
            " close it, or write to another --db"
        )
    return (
        f"cannot reach the database: {reason}\n"
        "  fix: check that the server is running, and the host, port, user and password in the URL"
    )


def _unusable_path(exc: BaseException) -> str | None:
    """A path the command was given that cannot be used (missing, a folder where a file is expected, no
    permission, a read-only place): bad input, one line naming the path, not an internal error."""
    if not isinstance(exc, OSError) or exc.filename is None:
        return None
    reason = exc.strerror or type(exc).__name__
    return f"{exc.filename}: {reason}\n  fix: check the path (it must exist, be of the right kind and be writable where written)"


def _internal_error(exc: BaseException) -> None:
    """An unexpected failure: one clear line and exit 1; the traceback only when FEDOMOP_DEBUG is set."""
    import os

    if os.environ.get("FEDOMOP_DEBUG"):
        raise exc
    err_console.print(
        f"[bold red]internal error[/] ({type(exc).__name__}): {escape(str(exc))}\n"
        "  this is a fedomop bug, not a problem with your data: please report it with the command you ran;"
        " set FEDOMOP_DEBUG=1 to see the traceback",
        highlight=False,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
