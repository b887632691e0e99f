"""The `autoprune-agent` command: a thin face over library functions.

Each sub-command lives in its own module and only parses, calls one library
function and prints. `AutopruneError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys

import typer

from autoprune.errors import AutopruneError
from autoprune.safe_text import terminal_safe

app = typer.Typer(name="autoprune-agent", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Discover LLM pruning algorithms with an LLM agent; prune, evaluate, replay.")


def register_commands() -> None:
    # Imported here so `--help` stays fast and each module registers its own commands.
    from autoprune.cli import inspect_cmd, prune_cmd, run_cmd, sandbox_cmd  # noqa: F401
    from autoprune.cli import rates_cmd  # noqa: F401


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class TerminalSafeFormatter(logging.Formatter):
    """Log records may quote candidate or LLM text: no escape sequence reaches the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(TerminalSafeFormatter(LOG_FORMAT))
    register_commands()
    try:
        app(args=argv, standalone_mode=False)
    except AutopruneError as exc:
        typer.echo(f"error: {terminal_safe(exc)}", err=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("aborted", err=True)
            sys.exit(130)
        raise
