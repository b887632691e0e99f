"""The `autoprune-agent` command: a thin face over library functions.

Each sub-command lives in its own module and only parses, calls one library
function and prints. `AutopruneError` and the parser's usage errors become one
line on stderr and exit code 2. Nothing heavy (torch, transformers, langgraph)
is imported before a command starts its work: `--help`, `--version` and a bad
flag or path are answered at once (benchmarks/cli_latency.py).
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


def show_version(value: bool) -> None:
    if value:
        from autoprune import __version__

        typer.echo(f"autoprune-agent {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", is_eager=True, callback=show_version,
                                              help="print the version and exit")) -> None:
    pass      # options of the command itself; the help text is the app's


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
    except Exception as exc:  # the parser's usage errors come through here in non-standalone mode
        exit_on_parser_error(exc)
        raise


def parser_error_types() -> tuple[type[Exception], ...]:
    """typer >= 0.2x raises its own copy of click's exceptions (`typer._click`), older typer click's."""
    import click

    return tuple({click.exceptions.ClickException, getattr(typer, "TyperException", click.exceptions.ClickException)})


def exit_on_parser_error(exc: Exception) -> None:
    """A bad flag, value or path given to the parser: one line on stderr, exit code 2. Returns if `exc`
    is not the parser's."""
    if type(exc).__name__ == "Abort" or isinstance(exc, (typer.Abort, KeyboardInterrupt)):
        typer.echo("aborted", err=True)
        sys.exit(130)
    if not isinstance(exc, parser_error_types()):
        return
    if type(exc).__name__ == "NoArgsIsHelpError":       # a bare group (`autoprune-agent`, `... sandbox`): its help
        exc.show()
        sys.exit(0)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    message = " ".join(str(exc.format_message()).split())
    typer.echo(f"error: {terminal_safe(message, keep_newlines=False)}{hint}", err=True)
    sys.exit(2)
