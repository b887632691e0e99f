"""Shared set-up for the agent tests: a tiny Llama wired to the real sandbox, fitness and prompts.

Only the LLM is scripted (a test double that replays fixed replies per node):
every other service is the real one a user runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoprune.agent.budget import Budget
from autoprune.agent.config import RunConfig
from autoprune.agent.finale import Finale
from autoprune.agent.fitness import FitnessService
from autoprune.agent.llm import LLMReply
from autoprune.agent.llm_journal import JournaledLLM
from autoprune.agent.services import AgentServices, CandidateRunner, RunContext, RunTrace
from autoprune.data import WindowSet

GOOD_EXPRESSION = "```python\nW.abs() * X.max_abs\n```"
CRASHING_EXPRESSION = "```python\nW.abs() * X.norm[:3]\n```"      # passes the gate, fails to broadcast


@dataclass
class ScriptedLLM:
    """Replies per node, in order (the last one repeats); records every request."""

    replies: dict[str, list[str]]
    requests: list[tuple[str, list[dict]]] = field(default_factory=list)

    def chat(self, messages, *, node, seed=None, **_options):
        self.requests.append((node, messages))
        queue = self.replies[node]
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        return LLMReply(text=text, prompt_tokens=10, completion_tokens=5, seconds=0.01, model="scripted")


def default_replies() -> dict[str, list[str]]:
    return {"analyse": ["- down_proj inputs have outliers"],
            "hypothesise": ["HYPOTHESIS: rms-input: weights feeding inputs with large RMS matter"],
            "write_code": [CRASHING_EXPRESSION, GOOD_EXPRESSION],
            "reflect": ["LESSON: the RMS of inputs behaves like the norm"]}


def random_windows(n: int, seqlen: int = 32, seed: int = 1) -> WindowSet:
    generator = torch.Generator().manual_seed(seed)
    return WindowSet(torch.randint(0, 256, (n, seqlen), generator=generator), f"{n}x{seqlen} random tokens")


def tiny_services(model, run_dir: Path, llm: ScriptedLLM, *, budget: int = 2, backend: str = "process",
                  **overrides) -> AgentServices:
    from autoprune.prompts.registry import get_prompt_set
    from autoprune.pruning.calibration import collect_activation_stats
    from autoprune.sandbox.bundle import write_scoring_bundle

    config = RunConfig(budget=budget, sandbox=backend, seqlen=32, fitness_levels=[2, 4], calibration_samples=4,
                       sdsa_lambdas=[0.04], export_model=True, **overrides)
    run_dir = Path(run_dir)
    config.save(run_dir) if run_dir.exists() else None
    calibration = random_windows(4, seed=2)
    stats = collect_activation_stats(model, calibration)
    bundle = write_scoring_bundle(model, stats, run_dir / "bundle")
    runner = CandidateRunner(bundle, config.sparsity_pattern, config.sparsity, backend)
    fitness = FitnessService(model, random_windows(4, seed=3), config.fitness_levels)
    trace = RunTrace(run_dir)
    finale = Finale(model=model, tokenizer=None, calibration=calibration, stats=stats, runner=runner,
                    fitness=fitness, test_windows_fn=lambda: random_windows(3, seed=4), config=config,
                    run_dir=run_dir)
    return AgentServices(config=config, run_dir=run_dir, trace=trace, llm=JournaledLLM(llm, run_dir, trace),
                         prompts=get_prompt_set("gcot"), sandbox=runner, fitness=fitness,
                         budget=Budget(config.budget, config.llm_call_cap, config.token_cap),
                         context=RunContext(model_name="tiny-llama", model_profile="(tiny profile)",
                                            code_style="expression"),
                         finale=finale)
