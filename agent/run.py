"""Program search as a mode of the agent runtime (agent/runtime), and `run_agent`, its entry point.

Run folder (DESIGN §7): config.json, trace.jsonl, candidates/, checkpoints.sqlite
(LangGraph's SqliteSaver, one thread per run), llm_journal.jsonl, bundle/,
report/ (Markdown, HTML, plots), model/ (the pruned model). The runtime owns the folder's
trace, checkpoints, journal, endpoint, signals and report; this module owns what program search adds:
the sandbox and its executor, the model's scoring bundle, the GCoT graph, the finale's summary.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from autoprune.agent.archive import write_seeds
from autoprune.agent.budget import Budget
from autoprune.agent.config import RunConfig, resume_config
from autoprune.agent.executors import CandidateRunner, sandbox_limits
from autoprune.agent.finale import Finale
from autoprune.agent.graph import build_graph
from autoprune.agent.live import LiveView
from autoprune.agent.runtime.folder import fresh_run_dir, resumable_run_dir
from autoprune.agent.runtime.mode import Run
from autoprune.agent.runtime.run import run_search
from autoprune.agent.services import AgentServices, RunContext
from autoprune.agent.setup import Prepared, prepare, profile_text
from autoprune.agent.state import AgentState, initial_state
from autoprune.agent.summary import RunSummary, summarise
from autoprune.errors import BadInputError

PROCESS_SANDBOX_WARNING = ("sandbox backend 'process': candidates run as local subprocesses with rlimits and "
                           "the static gate only, without container isolation")


class ProgramSearch:
    """The LLM writes pruning programs; the sandbox runs them; the tournament and finale judge them."""

    name = "program"
    state_schema = AgentState
    once_keys: dict = {}

    def __init__(self, config: RunConfig):
        self.settings = config
        self.prepared: Optional[Prepared] = None

    def prepare(self, run: Run) -> None:
        if self.settings.sandbox == "process":
            run.trace.emit("note", text=PROCESS_SANDBOX_WARNING)
        self.prepared = prepare(self.settings, run.run_dir)

    def connect(self, run: Run) -> AgentServices:
        from autoprune.agent.codegen import resolve_code_style

        style = ("expression" if self.settings.proposer != "llm"     # trusted proposers write expressions
                 else resolve_code_style(self.settings.code_mode, embedded_llm=run.endpoint.embedded))
        services = build_services(self.settings, run, self.prepared, style)
        services.executor = run.resources.enter_context(
            evaluation_executor(self.settings, self.prepared))
        return services

    def header(self, run: Run, services: AgentServices) -> dict:
        prepared = self.prepared
        return {"model": prepared.loaded.name,
                "protocol": {"calibration": prepared.calibration.description,
                             "fitness": prepared.fitness.describe(), "levels": prepared.fitness.levels,
                             "seqlen": self.settings.seqlen}}

    def build_graph(self, services: AgentServices, checkpointer):
        return build_graph(services, checkpointer=checkpointer)

    def graph_input(self, services: AgentServices, values: Optional[dict], run: Run) -> Optional[dict]:
        if values is None:
            seed_ids, records = write_seeds(services.run_dir, **services.context.offered())
            return initial_state(run.run_id, seed_ids, records)
        for cid, rec in values.get("candidates", {}).items():
            for nll in rec.get("nll", {}).values():
                services.fitness.prime(cid, nll)
        return None

    @contextlib.contextmanager
    def view(self, services: AgentServices, live: bool):
        with LiveView(services.budget, enabled=live) as view:
            services.on_update = view.node_started
            yield view

    def finalize(self, services: AgentServices, state: dict, run: Run) -> RunSummary:
        return summarise(state, run.run_dir, self.settings, wall_s=run.seconds)


def run_agent(config: Optional[RunConfig] = None, *, resume: Optional[Path] = None, live: bool = True,
              confirm: Optional[dict] = None) -> RunSummary:
    """Run (or, with `resume`, continue) the agent; returns the summary `--json` prints.
    `confirm`: with `resume`, the endpoint / sandbox / executor settings the caller passes again
    (agent.config.RESUME_CONFIRMED); a run folder that sets any of them otherwise is refused."""
    if resume is not None:
        run_dir = resumable_run_dir(resume)
        config = resume_config(run_dir, confirm)
    elif config is None:
        raise BadInputError("run_agent needs a RunConfig or a run folder to resume")
    else:
        run_dir = fresh_run_dir(config.out, seed=config.seed, flag="--out", resume_hint=f"--resume {config.out}")
        config.save(run_dir)
    return run_search(ProgramSearch(config), run_dir, resumed=resume is not None, live=live)


@contextlib.contextmanager
def evaluation_executor(config: RunConfig, prepared):
    """The run's executor (None for serial runs), closed when the run ends, also on errors.
    Its workers rebuild the run's model, fitness windows and sandbox slot from a picklable spec."""
    if not config.parallel:
        yield None
        return
    from autoprune.agent.executors import WorkerSpec, make_executor

    spec = WorkerSpec.from_config(config, prepared.bundle.folder, prepared.fitness.levels)
    gpus = None if not config.gpus else ([str(i) for i in range(gpu_count())] if config.gpus == "all"
                                         else [g.strip() for g in config.gpus.split(",")])
    executor = make_executor(config.executor, spec, workers=config.workers, ray_address=config.ray_address,
                             gpus=gpus)
    try:
        yield executor
    finally:
        executor.close()


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def build_services(config: RunConfig, run: Run, prepared: Prepared, code_style: str) -> AgentServices:
    from autoprune.prompts.registry import get_prompt_set

    runner = CandidateRunner(prepared.bundle, config.sparsity_pattern, config.sparsity, config.sandbox,
                             limits=sandbox_limits(config))
    context = RunContext(model_name=prepared.loaded.name, model_profile=profile_text(prepared.profile),
                         code_style=code_style, has_hessian=prepared.has_hessian, extras={"llm": run.endpoint.describe(),
                                                        "calibration": prepared.calibration.description})
    finale = Finale(model=prepared.loaded.model, tokenizer=prepared.loaded.tokenizer,
                    calibration=prepared.calibration, stats=prepared.stats, runner=runner, fitness=prepared.fitness,
                    test_windows_fn=lambda: prepared.test_windows(config), config=config, run_dir=run.run_dir)
    budget = Budget(config.budget, config.llm_call_cap, config.token_cap)
    return AgentServices(config=config, run_dir=run.run_dir, trace=run.trace, llm=run.llm,
                         prompts=get_prompt_set(config.prompts), sandbox=runner, fitness=prepared.fitness,
                         budget=budget, context=context, finale=finale)
