"""`replay`, `report` and `plugins`: look at runs and at what is installed (thin commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from autoprune.cli import app


@app.command("replay")
def replay(run_dir: Path = typer.Argument(..., help="run folder (holds trace.jsonl)"),
           follow: bool = typer.Option(True, "--follow/--no-follow",
                                       help="keep reading the trace while the run writes it"),
           speed: float = typer.Option(2.0, help="playback speed in steps per second (space plays/pauses)")) -> None:
    """Terminal UI over a run's trace: timeline, candidates, prompts, code, verdicts, standings, insights."""
    from autoprune.tui import ReplayApp

    ReplayApp(run_dir, follow=follow, speed=speed).run()


@app.command("report")
def report(run_dir: Path = typer.Argument(..., help="run folder (holds trace.jsonl)"),
           out: Optional[Path] = typer.Option(None, "--out", help="folder for the report (default: RUN_DIR/report)"),
           as_json: bool = typer.Option(False, "--json", help="print the written paths as JSON")) -> None:
    """Markdown + self-contained HTML report with plots (PNG beside it)."""
    from autoprune.reports import build_report

    files = build_report(run_dir, out)
    if as_json:
        typer.echo(json.dumps({"markdown": str(files.markdown), "html": str(files.html),
                               "figures": {k: str(v) for k, v in files.figures.items()},
                               "problems": files.problems}, indent=2))
        return
    for problem in files.problems:
        typer.echo(f"notice: {problem}", err=True)
    typer.echo(f"wrote {files.markdown}\nwrote {files.html}\n{len(files.figures)} figures in {files.markdown.parent}")


@app.command("plugins")
def plugins(as_json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """Installed prompt / evaluator / metric / allocator plugins, where they come from, and whether they load."""
    from autoprune.plugins import GROUPS, discover_all

    found = discover_all()
    if as_json:
        keys = ("group", "name", "target", "distribution", "version", "origin", "loaded", "error")
        typer.echo(json.dumps([{k: getattr(p, k) for k in keys} for p in found], indent=2))
        return
    # Plain lines (not a table): long targets, paths and errors stay whole and greppable.
    for group in GROUPS:
        mine = [p for p in found if p.group == group]
        typer.echo(f"{group}: {len(mine) or 'none'}")
        for p in mine:
            state = "loaded" if p.loaded else f"BROKEN ({p.error})"
            typer.echo(f"  {p.name:<14} {state}\n  {'':<14} {p.target}\n"
                       f"  {'':<14} from {p.distribution} {p.version} at {p.origin}")
    broken = sum(not p.loaded for p in found)
    typer.echo(f"{len(found)} plugins, {broken} broken")
