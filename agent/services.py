"""The services nodes are given: LLM, sandbox runner, fitness, trace, budget, run context.

Nodes never build these themselves: `run.py` builds them once per run and the
graph binds them to every node (`functools.partial`), so a test can hand a node
a tiny model's fitness service and a scripted LLM and call it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from autoprune.agent.budget import Budget
from autoprune.agent.config import RunConfig
from autoprune.agent.fitness import FitnessService
from autoprune.agent.trace import TraceWriter, read_trace
from autoprune.pruning.masks import SparsityPattern


class RunTrace:
    """The run's TraceWriter plus at-most-once events (candidate, verdict, fitness) across resumes."""

    ONCE_KEYS = {"candidate": ("id",), "verdict": ("id",), "fitness": ("id", "level"), "hypothesis": ("name",),
                "baseline": ("name", "level")}

    def __init__(self, run_dir: Path):
        self.writer = TraceWriter(run_dir)
        self._seen: set[tuple] = set()
        if self.writer.path.is_file():
            for event in read_trace(self.writer.path).events:
                key = self._key(event["type"], event)
                if key is not None:
                    self._seen.add(key)

    def _key(self, type: str, payload: dict) -> Optional[tuple]:
        fields = self.ONCE_KEYS.get(type)
        return None if fields is None else (type, *(payload.get(f) for f in fields))

    @property
    def last_seq(self) -> int:
        return self.writer._seq

    def emit(self, type: str, **payload: Any) -> Optional[dict]:
        """Write one event; an at-most-once event already in the trace is skipped (returns None)."""
        key = self._key(type, payload)
        if key is not None:
            if key in self._seen:
                return None
            self._seen.add(key)
        return self.writer.emit(type, **payload)


@dataclass
class SandboxOutcome:
    status: str
    message: str
    timings: dict[str, float]
    masks: Optional[dict]
    profile: Optional[dict]
    group: str
    seconds: float


class CandidateRunner:
    """Sends one candidate source to the sandbox with the run's bundle, pattern and limits."""

    def __init__(self, bundle: Any, pattern: SparsityPattern, sparsity: float, backend: str, *,
                 limits: Any = None, run: Optional[Callable] = None):
        self.bundle, self.pattern, self.sparsity, self.backend, self.limits = bundle, pattern, sparsity, backend, limits
        self._run = run

    def uniform_sparsity(self) -> dict[str, float]:
        value = self.pattern.sparsity if self.pattern.structured else self.sparsity
        return {name: value for name in self.bundle.names}

    def block_to_layer_sparsity(self, block_sparsity: list[float]) -> dict[str, float]:
        return {spec.name: block_sparsity[spec.layer_index] for spec in self.bundle.layers}

    def run(self, source: str, *, layer_sparsity: Optional[dict[str, float]] = None,
            mode: str = "masks") -> SandboxOutcome:
        import time

        from autoprune.sandbox.verdict import ScoringRequest

        request = ScoringRequest(sparsity=layer_sparsity or self.uniform_sparsity(), pattern=self.pattern, mode=mode)
        started = time.perf_counter()
        verdict = self._runner()(source, self.bundle, request, **self._kwargs())
        return SandboxOutcome(status=verdict.status, message=verdict.message, timings=dict(verdict.timings),
                              masks=verdict.masks, profile=verdict.profile, group=getattr(verdict, "group", "row"),
                              seconds=time.perf_counter() - started)

    def _kwargs(self) -> dict:
        kwargs: dict[str, Any] = {"backend": self.backend}
        if self.limits is not None:
            kwargs["limits"] = self.limits
        return kwargs

    def _runner(self) -> Callable:
        if self._run is None:
            from autoprune.sandbox.api import run_candidate

            self._run = run_candidate
        return self._run


@dataclass
class RunContext:
    """What prompts and the finale need to know about the run (no tensors besides `loaded`)."""

    model_name: str
    model_profile: str                  # per-block outlier/skew table as text, for analyse
    code_style: str                     # "program" | "expression"
    has_gram: bool = False
    extras: dict = field(default_factory=dict)


@dataclass
class AgentServices:
    config: RunConfig
    run_dir: Path
    trace: RunTrace
    llm: Any                            # JournaledLLM (or anything with .chat(messages, node=, seed=))
    prompts: Any                        # PromptSet: .render(node, **context) -> messages
    sandbox: CandidateRunner
    fitness: FitnessService
    budget: Budget
    context: RunContext
    finale: Any = None                  # agent.finale.Finale: trusted final evaluation and export
    executor: Any = None                # agent.executors.Executor when the run evaluates in parallel
    on_update: Optional[Callable[[str, dict], None]] = None   # live progress hook (node, update)
