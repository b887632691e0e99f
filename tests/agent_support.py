"""Shared set-up for the agent tests: a tiny Llama wired to the real sandbox, fitness and prompts.

Only the LLM's answers are scripted: `ScriptedLLM` is the real `LLMClient` (the `openai`
client) talking HTTP to an OpenAI-compatible server on loopback that replays fixed replies
per node, the node read from the prompt itself. Every other service is the real one a user runs.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import torch

from autoprune.agent.budget import Budget
from autoprune.agent.config import RunConfig
from autoprune.agent.finale import Finale
from autoprune.agent.fitness import FitnessService
from autoprune.agent.llm import LLMClient
from autoprune.agent.llm_journal import JournaledLLM
from autoprune.agent.services import AgentServices, CandidateRunner, RunContext, RunTrace
from autoprune.data import WindowSet
from autoprune.evaluators.baseline_cache import BaselineCache
from llm_server_support import SCRIPTED_SERVERS, FaultyLLMServer, node_of

GOOD_EXPRESSION = "```python\nW.abs() * X.max_abs\n```"
CRASHING_EXPRESSION = "```python\nW.abs() * X.norm[:3]\n```"      # passes the gate, fails to broadcast
# tiny_services overrides for a test about the search, not the finale: the finale still runs, at uniform, with
# no baselines and no refit (the whole finale: tests/test_finale_refit.py, test_agent_graph's finished run).
LEAN_FINALE = {"final_baselines": [], "final_allocations": ["uniform"], "reconstruct": "none"}


class ScriptedLLM(LLMClient):
    """The real client against a scripted server: replies per node, in order (the last one repeats).
    `requests` holds (node, messages) for every request the server answered."""

    def __init__(self, replies: dict[str, list[str]], **client_options):
        self.replies = {node: list(queue) for node, queue in replies.items()}
        self.requests: list[tuple[Optional[str], list[dict]]] = []
        self.server = FaultyLLMServer(["ok"], reply=self.answer)
        SCRIPTED_SERVERS.append(self.server)
        super().__init__(self.server.base_url, "scripted", **{"max_retries": 0, "timeout": 30.0, **client_options})

    def answer(self, body: dict) -> str:
        node = node_of(body["messages"], tuple(self.replies))
        self.requests.append((node, body["messages"]))
        if node not in self.replies:
            raise KeyError(f"no scripted reply for node {node!r} (scripted: {sorted(self.replies)})")
        queue = self.replies[node]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def default_replies() -> dict[str, list[str]]:
    return {"analyse": ["- down_proj inputs have outliers"],
            "hypothesise": ["HYPOTHESIS: rms-input: weights feeding inputs with large RMS matter"],
            "write_code": [CRASHING_EXPRESSION, GOOD_EXPRESSION],
            "reflect": ["LESSON: the RMS of inputs behaves like the norm"]}


def random_windows(n: int, seqlen: int = 32, seed: int = 1) -> WindowSet:
    generator = torch.Generator().manual_seed(seed)
    return WindowSet(torch.randint(0, 256, (n, seqlen), generator=generator), f"{n}x{seqlen} random tokens")


@functools.lru_cache(maxsize=1)
def agent_backend() -> str:
    """The agent tests' sandbox: "docker" where an engine answers (the image is built if missing), else
    "process". AUTOPRUNE_TEST_SANDBOX (conftest's --agent-sandbox) forces one; with
    AUTOPRUNE_REQUIRE_DOCKER=1 a missing engine is an error, not a fallback."""
    from autoprune.errors import SandboxError
    from autoprune.sandbox.build import build_image

    choice = os.environ.get("AUTOPRUNE_TEST_SANDBOX", "auto")
    if choice == "process":
        return "process"
    try:
        build_image(step=lambda message: None)
    except SandboxError as exc:
        if choice == "docker" or os.environ.get("AUTOPRUNE_REQUIRE_DOCKER", "") not in ("", "0"):
            raise SandboxError(f"the agent tests must use the Docker sandbox here: {exc}") from None
        return "process"
    return "docker"


def tiny_services(model, run_dir: Path, llm: ScriptedLLM, *, budget: int = 2, backend: Optional[str] = None,
                  **overrides) -> AgentServices:
    from autoprune.prompts.registry import get_prompt_set
    from autoprune.pruning.calibration import collect_activation_stats
    from autoprune.sandbox.bundle import write_scoring_bundle

    backend = backend or agent_backend()
    # pipeline_depth 0 unless a test asks: one candidate after another, as these tests' scripts expect
    # (the evaluation pipeline has its own tests: tests/test_pipeline_overlap.py).
    overrides = {"pipeline_depth": 0, **overrides}
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
                    run_dir=run_dir, baseline_cache=BaselineCache(run_dir / "baseline-cache"))
    return AgentServices(config=config, run_dir=run_dir, trace=trace, llm=JournaledLLM(llm, run_dir, trace),
                         prompts=get_prompt_set("gcot"), sandbox=runner, fitness=fitness,
                         budget=Budget(config.budget, config.llm_call_cap, config.token_cap),
                         context=RunContext(model_name="tiny-llama", model_profile="(tiny profile)",
                                            code_style="expression"),
                         finale=finale)
