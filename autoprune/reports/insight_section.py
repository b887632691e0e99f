"""The report's "What the search learned" section: measured insights with effect sizes, not LLM lessons.

Each row is one single-ingredient change the archive measured (agent/evidence.py): the mean paired
NLL difference on common validation windows (with minus without), its 95 % bootstrap interval,
the perplexity change it implies, and how many candidate pairs and windows it rests on. The
direction is the interval's, never the LLM's. The graph comes from the trace (a run folder is
input): only findings whose fields have the expected types are shown.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from autoprune.reports.document import Para, Section, Table
from autoprune.reports.run_model import RunView

ROWS_SHOWN = 12
VERBS = {"supports": "lowers perplexity", "refutes": "raises perplexity", "inconclusive": "no clear effect"}
NUMBERS = ("mean_nll_diff", "ci_low", "ci_high", "ppl_change_pct")


def valid_finding(item: Any) -> Optional[dict]:
    """The finding if every field a row shows has its type (finite numbers, known relation), else None."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or item.get("relation") not in VERBS:
        return None
    if not all(isinstance(item.get(k), (int, float)) and not isinstance(item.get(k), bool)
               and math.isfinite(item[k]) for k in NUMBERS):
        return None
    if not all(isinstance(item.get(k), int) and not isinstance(item.get(k), bool) for k in ("pairs", "windows")):
        return None
    return item


def insight_section(view: RunView, figures: set[str]) -> Optional[Section]:
    graph = view.insight if isinstance(view.insight, dict) else {}
    raw = graph.get("findings") if isinstance(graph.get("findings"), list) else []
    findings = [f for f in (valid_finding(item) for item in raw) if f is not None]
    if not findings:
        return None
    decided = [f for f in findings if f["relation"] != "inconclusive"]
    rows = [[" ".join(f["name"].split())[:80], VERBS[f["relation"]], f"{f['mean_nll_diff']:+.4f}",
             f"{f['ci_low']:+.4f} to {f['ci_high']:+.4f}", f"{f['ppl_change_pct']:+.1f}%", str(f["pairs"]),
             str(f["windows"])] for f in (decided + [f for f in findings if f not in decided])[:ROWS_SHOWN]]
    intro = Para(f"{len(decided)} of {len(findings)} single-ingredient changes measured in the archive have a 95% "
                 "interval that excludes zero. Each compares candidates that differ in that one ingredient, "
                 "window by window on common validation windows (NLL with minus without); the direction comes "
                 "from the interval, not from the LLM.")
    table = Table(["change", "effect", "mean NLL diff", "95% CI", "perplexity", "pairs", "windows"], rows)
    return Section("What the search learned (measured)", [intro, table])
