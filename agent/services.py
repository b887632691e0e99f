"""The services nodes are given: LLM, sandbox runner, fitness, trace, budget, run context.

Nodes never build these themselves: `run.py` (program mode) builds them once per run and the
graph binds them to every node (`functools.partial`), so a test can hand a node
a tiny model's fitness service and a scripted LLM and call it alone. The evaluation pipeline
(agent/pipeline.py) over the run's executor is built once, at its first use, and closed with the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from autoprune.agent.budget import Budget
from autoprune.agent.config import RunConfig
from autoprune.agent.executors import CandidateRunner, SerialExecutor
from autoprune.agent.fitness import FitnessService
from autoprune.agent.runtime.trace import RunTrace  # noqa: F401 - the runtime's; nodes' services carry it


@dataclass
class RunContext:
    """What prompts and the finale need to know about the run (no tensors besides `loaded`)."""

    model_name: str
    model_profile: str                  # per-block outlier/skew table as text, for analyse
    code_style: str                     # "program" | "expression"
    has_gram: bool = False
    has_hessian: bool = False           # X.hinv_diag was collected (agent/setup.py)
    extras: dict = field(default_factory=dict)

    def offered(self) -> dict[str, bool]:
        """What the run collected, as `contract.available`'s flags (prompts, validators, mutation)."""
        return {"has_hessian": self.has_hessian, "has_gram": self.has_gram}


@dataclass
class AgentServices:
    config: RunConfig
    run_dir: Path
    trace: RunTrace
    llm: Any                            # JournaledLLM (or anything with .chat(messages, node=, seed=))
    prompts: Any                        # PromptSet: .render(node, **context) -> messages
    sandbox: CandidateRunner           # agent.executors: the run's sandbox requests (the finale's too)
    fitness: FitnessService
    budget: Budget
    context: RunContext
    finale: Any = None                  # agent.finale.Finale: trusted final evaluation and export
    executor: Any = None                # agent.executors.Executor when the run evaluates in parallel
    on_update: Optional[Callable[[str, dict], None]] = None   # live progress hook (node, update)
    _pipeline: Any = field(default=None, init=False, repr=False)

    def evaluation(self):
        """The run's evaluation pipeline over its executor (serial runs: the host's own worker,
        `SerialExecutor.resident`), built once."""
        if self._pipeline is None:
            from autoprune.agent.pipeline import EvaluationPipeline, torch_threads_beside

            executor = self.executor or SerialExecutor.resident(self.sandbox, self.fitness)
            depth = self.config.pipeline_depth
            threads = None
            if depth and self.config.uses_embedded_llm and getattr(self.config, "proposer", "llm") == "llm":
                from autoprune.agent.embedded_server import llama_cpp_threads

                threads = torch_threads_beside(llama_cpp_threads())
            self._pipeline = EvaluationPipeline(executor, depth=depth, torch_threads=threads)
        return self._pipeline

    def close(self) -> None:
        """End of the run (agent/runtime/run.py): the pipeline starts nothing more."""
        if self._pipeline is not None:
            self._pipeline.close()
