"""Live progress of a run (rich): node, budget, verdicts, best fitness vs Wanda, tokens."""

from __future__ import annotations

import sys
from typing import Optional

from rich.console import Console
from rich.live import Live
from rich.table import Table

from autoprune.agent.archive import WANDA_ID
from autoprune.agent.budget import Budget


def status_table(state: dict, node: str, budget: Budget) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 1))
    candidates = state.get("candidates", {})
    order = state.get("leaderboard", [])
    best = candidates.get(order[0], {}) if order else {}
    wanda = candidates.get(WANDA_ID, {})
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(state.get("verdicts", {}).items())) or "-"
    tokens = state.get("tokens", {})
    table.add_row("[bold]node", node or "-")
    table.add_row("[bold]generation", str(state.get("generation", 0)))
    table.add_row("[bold]budget", f"{state.get('budget_used', 0)}/{budget.candidates} candidates, "
                                  f"{state.get('llm_calls', 0)}/{budget.llm_calls} LLM calls")
    table.add_row("[bold]verdicts", verdicts)
    best_text = f"{order[0]} ppl {best['fitness']:.2f} (level {best.get('level')})" if best.get("fitness") else "-"
    wanda_text = f"ppl {wanda['fitness']:.2f} (level {wanda.get('level')})" if wanda.get("fitness") else "-"
    table.add_row("[bold]best", best_text)
    table.add_row("[bold]wanda", wanda_text)
    table.add_row("[bold]tokens", f"{tokens.get('prompt', 0)} prompt + {tokens.get('completion', 0)} completion")
    return table


class LiveView:
    """A rich Live panel on stderr; silent when disabled or stderr is not a terminal."""

    def __init__(self, budget: Budget, *, enabled: bool = True):
        self.budget, self.node, self.state = budget, "", {}
        self.enabled = enabled and sys.stderr.isatty()
        self._live: Optional[Live] = None

    def __enter__(self) -> "LiveView":
        if self.enabled:
            self._live = Live(status_table({}, "starting", self.budget), console=Console(stderr=True),
                              refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def node_started(self, node: str, _update: dict) -> None:
        self.node = node
        self._refresh()

    def state_changed(self, state: dict) -> None:
        self.state = state
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(status_table(self.state, self.node, self.budget))
