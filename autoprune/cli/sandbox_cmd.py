"""`autoprune-agent sandbox build|check`: the sandbox image and a self-test of its isolation."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from autoprune.cli import app

sandbox_app = typer.Typer(name="sandbox", no_args_is_help=True,
                          help="Build the sandbox image; self-test the isolation.")
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("build")
def build(force: bool = typer.Option(False, "--force", help="rebuild even if the image exists")) -> None:
    """Build the sandbox image offline (debootstrap base + local wheels); cached."""
    from autoprune.sandbox.build import build_image

    console = Console(stderr=True)
    with console.status("building the sandbox image") as status:
        def step(message: str) -> None:
            console.log(message)
            status.update(message.strip())
        build_image(force=force, step=step)


@sandbox_app.command("check")
def check(as_json: bool = typer.Option(False, "--json", help="print the results as JSON")) -> None:
    """Run hostile probes through the real container (and the process backend's namespaces)
    and show what holds (exit 1 if any fails)."""
    from autoprune.sandbox.selfcheck import self_check

    console = Console(stderr=True)
    with console.status("probing the sandbox") as status:
        results = self_check(on_result=lambda r: status.update(f"probed {r.probe.name}"))
    if as_json:
        typer.echo(json.dumps([{"probe": r.probe.name, "backend": r.probe.backend,
                                "expect": r.probe.expect, "status": r.verdict.status,
                                "holds": r.holds, "breach": r.breach,
                                "seconds": round(r.verdict.timings.get("total", 0.0), 2)}
                               for r in results], indent=2))
    else:
        table = Table(title="sandbox isolation self-check")
        for column in ("probe", "what must hold", "expected", "observed", "holds", "s"):
            table.add_column(column)
        for r in results:
            table.add_row(r.probe.name, r.probe.what, r.probe.expect, r.verdict.status,
                          "[green]yes[/]" if r.holds else "[red]NO[/]",
                          f"{r.verdict.timings.get('total', 0.0):.1f}")
        Console().print(table)
    if not all(r.holds for r in results):
        raise typer.Exit(1)
