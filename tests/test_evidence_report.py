"""Measured insights reach the report and the replay tree; malformed findings from a run folder are left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from textual.widgets import Tree

from autoprune.agent.evidence import Change, Finding, effect_of
from autoprune.reports.document import Document
from autoprune.reports.insight_section import insight_section
from autoprune.reports.render_markdown import render_markdown
from autoprune.reports.run_model import RunView
from autoprune.tui.insight_tree import fill_insight_tree


def graph_with(findings: list) -> dict:
    return {"hypotheses": {"outlier-inputs": "s"}, "evidence": [], "lessons": {}, "findings": findings}


def measured() -> list[dict]:
    helps = Finding(Change("transform", "", "sqrt transform"), effect_of([np.full(8, -0.05) + 0.001 * np.arange(8)]),
                    (("g002-a0", "seed-wanda"),))
    unclear = Finding(Change("stat", "X.max_abs", "X.norm"), effect_of([np.array([0.1, -0.1, 0.05, -0.06])]), ())
    return [helps.to_dict(), unclear.to_dict()]


def test_report_section_shows_effects_with_intervals_and_skips_malformed_rows():
    hostile = [{"name": "x", "relation": "supports", "mean_nll_diff": "NaN", "ci_low": 0, "ci_high": 0,
                "ppl_change_pct": 0, "pairs": 1, "windows": 2},
               {"name": "y", "relation": "decided-by-llm", "mean_nll_diff": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                "ppl_change_pct": 0.0, "pairs": 1, "windows": 2}, "not a dict"]
    view = RunView(run_dir=Path("."), insight=graph_with(measured() + hostile))
    section = insight_section(view, set())
    table = section.blocks[1]
    assert [row[0] for row in table.rows] == ["adding sqrt transform", "X.max_abs -> X.norm"]
    assert table.rows[0][1] == "lowers perplexity" and table.rows[1][1] == "no clear effect"
    text = render_markdown(Document("r", [section]), {})
    assert "1 of 2 single-ingredient changes" in text and "95% CI" in text and "-0.0465" in text
    assert insight_section(RunView(run_dir=Path("."), insight=graph_with(hostile)), set()) is None
    assert insight_section(RunView(run_dir=Path(".")), set()) is None


def test_replay_tree_lists_the_measured_findings():
    tree = Tree("insight graph")
    fill_insight_tree(tree, graph_with(measured() + [{"name": "[red]x[/]", "relation": 3}]))
    labels = [str(node.label) for node in tree.root.children[0].children]
    assert labels[0].startswith("supports: adding sqrt transform") and "[-0.0" in labels[0]
    assert labels[2] == "?: [red]x[/]"                # text, never markup
