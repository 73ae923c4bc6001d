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

from fedomop.harmonize.ground.errors import FedomopError

app = typer.Typer(
    name="fedomop",
    help="Harmonize EHR extracts into OMOP CDM v5.4, validate them, and train federated models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)

# (module, attribute) of each command registrar; a module registers its commands on `app`.
_COMMAND_MODULES = [
    "fedomop.harmonize.commands.cdm",
    "fedomop.harmonize.commands.vocabulary",
    "fedomop.harmonize.commands.sample_data",
    "fedomop.harmonize.commands.map",
    "fedomop.harmonize.commands.validate",
    "fedomop.federated.commands.train",
    "fedomop.federated.commands.governance",
    "fedomop.harmonize.commands.demo",
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


def main() -> None:
    """Console entry point: run the app and turn typed errors into clear messages."""
    try:
        app(standalone_mode=False)
    except FedomopError as error:
        err_console.print(f"[bold red]error[/] ({type(error).__name__}): {error}", highlight=False)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
