"""`build_report`: a run folder -> report.md + report.html + PNG figures beside them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from autoprune.reports import REPORT_DIR, REPORT_FILE
from autoprune.reports.plots import draw_all
from autoprune.reports.render_html import render_html
from autoprune.reports.render_markdown import render_markdown
from autoprune.reports.run_data import load_run
from autoprune.reports.sections import build_document


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def build_report(run_dir: Path, out_dir: Optional[Path] = None) -> ReportFiles:
    """Write report.md, report.html and the PNG figures of `run_dir` into `out_dir` (default RUN_DIR/report)."""
    view = load_run(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else view.run_dir / REPORT_DIR
    figures = draw_all(view, out)
    doc = build_document(view, figures)
    markdown = out / REPORT_FILE
    markdown.write_text(render_markdown(doc, {n: p.name for n, p in figures.items()}), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(doc, figures), encoding="utf-8")
    return ReportFiles(markdown=markdown, html=page, figures=figures, problems=list(view.problems))
