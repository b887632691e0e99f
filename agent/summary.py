"""`RunSummary`: what a finished run reports (`--json` prints `to_dict()`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from autoprune.agent.archive import WANDA_ID
from autoprune.agent.config import RunConfig
from autoprune.reports import REPORT_DIR, REPORT_FILE


@dataclass
class RunSummary:
    run_dir: str
    run_id: str
    best: Optional[dict]                     # {id, hypothesis, fitness (validation ppl), level}
    wanda_fitness: Optional[float]           # Wanda on the same validation windows
    beats_wanda: Optional[bool]
    best_llm: Optional[dict] = None          # best search candidate (LLM or mutation) vs Wanda, same windows
    # Test perplexities of what the finale reports: {uniform, <chosen allocation>, <allocation>+<refit>, the
    # baselines (wanda, sparsegpt, alps), dense}; `table` holds the same as rows (variant, refit, allocation).
    test: dict = field(default_factory=dict)
    table: list = field(default_factory=list)
    chosen_allocation: Optional[str] = None
    refit: Optional[str] = None
    verdicts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)   # llm / sandbox / fitness / wall seconds
    tokens: dict = field(default_factory=dict)
    llm_calls: int = 0
    budget_used: int = 0
    budget: int = 0
    stop_reason: Optional[str] = None
    report: Optional[str] = None
    export: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(state: dict, run_dir: Path, config: RunConfig, *, wall_s: float) -> RunSummary:
    final = state.get("final") or {}
    winner = final.get("winner") or {}
    candidates = state.get("candidates", {})
    best = None
    if winner:
        best = {"id": winner["id"], "hypothesis": winner.get("hypothesis", ""), "fitness": winner.get("ppl_validation"),
                "level": winner.get("level")}
    elif state.get("leaderboard"):
        rec = candidates[state["leaderboard"][0]]
        best = {"id": rec["id"], "hypothesis": rec.get("hypothesis", ""), "fitness": rec.get("fitness"),
                "level": rec.get("level")}
    wanda = (final.get("wanda") or {}).get("ppl_validation") or candidates.get(WANDA_ID, {}).get("fitness")
    timings = {**{k: round(v, 3) for k, v in state.get("timings", {}).items()}, "wall": round(wall_s, 3)}
    return RunSummary(
        run_dir=str(run_dir), run_id=state.get("run_id", Path(run_dir).name), best=best, wanda_fitness=wanda,
        beats_wanda=final.get("beats_wanda"), best_llm=final.get("best_llm"), test=final.get("test", {}),
        table=list(final.get("table") or []), chosen_allocation=final.get("chosen_allocation"),
        refit=final.get("refit"), verdicts=dict(state.get("verdicts", {})),
        timings=timings, tokens=dict(state.get("tokens", {})), llm_calls=int(state.get("llm_calls", 0)),
        budget_used=int(state.get("budget_used", 0)), budget=config.budget, stop_reason=state.get("stop_reason"),
        report=str(Path(run_dir) / REPORT_DIR / REPORT_FILE), export=final.get("export"))
