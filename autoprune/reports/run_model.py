"""The typed view of one run folder that replay and reports share (`RunView`).

Built from trace events by `autoprune.reports.run_data`; nothing here parses
files. Every field tolerates missing payload keys: a view of a run still in
progress, or of an older trace, simply has fewer numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


MAX_SOURCE_BYTES = 1 << 20


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def file_inside(run_dir: Path, rel: str) -> Optional[Path]:
    """`run_dir/rel` when it is a regular file inside the run folder once every link is resolved.
    Paths come from the trace: `../`, absolute paths and symlinks leading out are refused."""
    try:
        root = Path(run_dir).resolve()
        path = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return path if path.is_relative_to(root) and path.is_file() else None


@dataclass
class FitnessPoint:
    level: int
    ppl: Optional[float]
    nwindows: Optional[int] = None
    seq: int = 0
    seconds: Optional[float] = None


@dataclass
class CandidateView:
    id: str
    generation: Optional[int] = None
    origin: str = ""                   # "seed" | "llm" | "mutation" | "" (unknown)
    hypothesis: str = ""
    source: Optional[str] = None
    path: Optional[str] = None         # relative to the run folder
    parent: Optional[str] = None
    status: Optional[str] = None       # sandbox verdict status; None until verified
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    fitness: dict[int, FitnessPoint] = field(default_factory=dict)   # level -> point
    rating: Optional[float] = None
    submitted: Optional[int] = None    # 1-based position among budgeted (LLM) sandbox submissions
    first_seq: int = 0

    @property
    def best_level(self) -> Optional[FitnessPoint]:
        """Fitness at the highest fidelity level evaluated (the one that ranks it)."""
        return self.fitness[max(self.fitness)] if self.fitness else None

    @property
    def ppl(self) -> Optional[float]:
        point = self.best_level
        return point.ppl if point else None

    @property
    def is_seed(self) -> bool:
        return self.origin == "seed" or self.generation == 0


@dataclass
class LLMExchange:
    node: str
    messages: list[dict] = field(default_factory=list)
    text: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: Optional[float] = None
    seq: int = 0


@dataclass
class Step:
    """One visit of a graph node (or a top-level event outside any node)."""

    index: int
    node: str
    started: float
    seconds: Optional[float] = None    # None while the node is still running
    generation: Optional[int] = None
    events: list[dict] = field(default_factory=list)
    exchanges: list[LLMExchange] = field(default_factory=list)
    candidate_ids: list[str] = field(default_factory=list)
    standings: Optional[list[dict]] = None

    @property
    def is_node(self) -> bool:
        return not self.node.startswith("(")


@dataclass
class RunView:
    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)             # run_id, protocol, model, llm
    steps: list[Step] = field(default_factory=list)
    candidates: dict[str, CandidateView] = field(default_factory=dict)   # in order of appearance
    exchanges: list[LLMExchange] = field(default_factory=list)
    tournaments: list[dict] = field(default_factory=list)               # tournament payloads
    insight: Optional[dict] = None                                       # latest insight graph
    hypotheses: dict[str, str] = field(default_factory=dict)             # name -> statement
    baselines: dict[str, list[dict]] = field(default_factory=dict)      # name -> baseline events (per level)
    final: Optional[dict] = None
    summary: Optional[dict] = None
    status: str = "empty"              # empty | running | finished | failed
    failure: Optional[str] = None
    problems: list[str] = field(default_factory=list)
    event_count: int = 0
    started_ts: Optional[float] = None
    last_ts: Optional[float] = None

    @property
    def standings(self) -> list[dict]:
        return list(self.tournaments[-1].get("standings", [])) if self.tournaments else []

    @property
    def winner_id(self) -> Optional[str]:
        for source in (self.final, self.summary):
            if source and source.get("winner"):
                winner = source["winner"]
                cid = winner.get("candidate_id") or winner.get("id") if isinstance(winner, dict) else winner
                return str(cid) if cid is not None else None
        ranked = self.ranked_candidates()
        return ranked[0].id if ranked else None

    def baseline_ppl(self, name: str, level: Optional[int] = None) -> Optional[float]:
        """A baseline's perplexity at `level` (or its latest); None when the trace has none."""
        entries = [e for e in self.baselines.get(name, []) if level is None or e.get("level") == level]
        value = entries[-1].get("ppl") if entries else None
        return float(value) if isinstance(value, (int, float)) else None

    def ranked_candidates(self) -> list[CandidateView]:
        """Evaluated candidates, best first: highest fidelity level, then lowest perplexity."""
        scored = [c for c in self.candidates.values() if c.ppl is not None]
        return sorted(scored, key=lambda c: (-max(c.fitness), c.ppl))

    def submitted_candidates(self) -> list[CandidateView]:
        """Budgeted sandbox submissions in the order they were sent (x axis of 'fitness over budget')."""
        subs = [c for c in self.candidates.values() if c.submitted is not None]
        return sorted(subs, key=lambda c: c.submitted)

    def verdict_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.candidates.values():
            key = c.status or "pending"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def node_seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for step in self.steps:
            if step.is_node and step.seconds is not None:
                totals[step.node] = totals.get(step.node, 0.0) + step.seconds
        return totals

    def node_tokens(self) -> dict[str, tuple[int, int]]:
        """node -> (prompt tokens, completion tokens)."""
        totals: dict[str, tuple[int, int]] = {}
        for ex in self.exchanges:
            p, c = totals.get(ex.node, (0, 0))
            totals[ex.node] = (p + ex.prompt_tokens, c + ex.completion_tokens)
        return totals

    def time_split(self) -> dict[str, float]:
        """Seconds spent in the LLM, the sandbox and fitness evaluation (what the run paid for)."""
        llm = sum(ex.seconds or 0.0 for ex in self.exchanges)
        # Sandbox timings nest (worker includes worker_score): take `total`, else the largest part.
        sandbox = sum(float(c.timings.get("total", max(c.timings.values(), default=0.0)))
                      for c in self.candidates.values())
        fitness = sum(p.seconds or 0.0 for c in self.candidates.values() for p in c.fitness.values())
        return {"llm": llm, "sandbox": sandbox, "fitness": fitness}

    def candidate_source(self, cid: str) -> Optional[str]:
        """The candidate's code: from the trace, else from its file in the run folder (never outside it)."""
        cand = self.candidates.get(cid)
        if cand is None:
            return None
        if cand.source:
            return cand.source
        for rel in (cand.path, f"candidates/{cid}.py"):
            path = file_inside(self.run_dir, rel) if rel else None
            if path is not None:
                with path.open("rb") as fh:
                    return fh.read(MAX_SOURCE_BYTES).decode("utf-8", errors="replace")
        return None

    def block_sparsities(self) -> dict[str, list[float]]:
        """Per-block sparsity under each allocation the run reports (uniform is implied by the target)."""
        final = self.final or {}
        found: dict[str, list[float]] = {}
        for name, value in (final.get("allocations") or {}).items():
            if isinstance(value, list) and all(is_number(v) for v in value):
                found[name] = [float(v) for v in value]
        for name in ("owl", "sdsa"):
            block = final.get(name)
            variants = [k for k in found if k.split("(")[0] == name]      # e.g. "sdsa(λ=0.04)"
            if not variants and isinstance(block, dict):
                for key in ("sparsities", "per_block", "blocks", "block_sparsity"):
                    if isinstance(block.get(key), list) and all(is_number(v) for v in block[key]):
                        found[name] = [float(v) for v in block[key]]
                        break
        target = self.config.get("sparsity")
        if found and "uniform" not in found and is_number(target):
            found = {"uniform": [float(target)] * len(next(iter(found.values()))), **found}
        return found

    def final_perplexities(self) -> dict[str, float]:
        """Test perplexity per configuration (`final_result.test`), nested {allocation: {metric: ppl}} flattened."""
        table: dict[str, float] = {}
        for name, value in ((self.final or {}).get("test") or {}).items():
            inner = value if isinstance(value, dict) else {"": value}
            for metric, ppl in inner.items():
                label = name if len(inner) == 1 or metric in ("ppl", "perplexity") else f"{name} / {metric}"
                try:
                    table[label] = float(ppl)
                except (TypeError, ValueError):
                    continue
        return table
