"""Rate search as a mode of the agent runtime (agent/runtime), and `run_rates_search`, its entry point.

Run folder: config.json, trace.jsonl, checkpoints.sqlite (LangGraph's SqliteSaver, one thread),
llm_journal.jsonl, stats_cache/, embedded_llm_server.log, report/, model/ (the exported pruned
model) and summary.json. `resume=True` continues after the last checkpointed node; the runtime owns the
folder's trace, checkpoints, journal, endpoint and signals.
"""

from __future__ import annotations

import contextlib
import json
from importlib.resources import files
from typing import Any, Optional

from autoprune.agent.budget import Budget
from autoprune.agent.rates.config import RatesConfig
from autoprune.agent.rates.finale import make_finalizer
from autoprune.agent.rates.graph import build_graph
from autoprune.agent.rates.services import RatesServices
from autoprune.agent.rates.setup import SearchInputs, allocator_seeds, prepare_search
from autoprune.agent.rates.state import OUTCOMES, RatesState
from autoprune.agent.runtime.folder import fresh_run_dir, resumable_run_dir
from autoprune.agent.runtime.mode import Run
from autoprune.agent.runtime.run import run_search
from autoprune.models import LoadedModel


def rates_prompt_set():
    """The templates in prompts/templates/rates/ as a prompt set named "rates"."""
    from autoprune.prompts.registry import load_folder

    return load_folder(files("autoprune.prompts") / "templates" / "rates", "rates")


class RatesSummary(dict):
    """The search's summary (a plain dict, as `--json` prints it)."""

    def to_dict(self) -> dict:
        return dict(self)


class RateSearch:
    """The LLM evolves layer-wise structured pruning rates; trusted code validates and scores them."""

    name = "rates"
    state_schema = RatesState
    # a rejected proposal: one verdict per attempt
    once_keys = {"verdict": ("id", "status", "attempt")}

    def __init__(self, config: RatesConfig, loaded: Optional[LoadedModel] = None):
        self.settings, self.loaded = config, loaded
        self.inputs: Optional[SearchInputs] = None

    def prepare(self, run: Run) -> None:
        self.inputs = prepare_search(self.settings, self.loaded)

    def connect(self, run: Run) -> RatesServices:
        config, inputs = self.settings, self.inputs
        return RatesServices(model=inputs.model, tokenizer=inputs.tokenizer, stats=inputs.stats,
                             windows=inputs.windows, constraint=inputs.constraint, llm=run.llm, trace=run.trace,
                             prompts=rates_prompt_set(), model_name=inputs.model_name,
                             budget=Budget(config.budget, counter="evaluated", spent="offspring evaluated"),
                             population_size=config.population, max_repairs=config.max_repairs,
                             llm_max_tokens=config.llm_max_tokens, temperature=config.temperature, seed=config.seed,
                             reconstruct=config.reconstruct, importance=inputs.importance,
                             proposal=self.proposal(run), finalize=make_finalizer(config, inputs.corpus),
                             seeds=allocator_seeds(inputs.model, inputs.stats, inputs.constraint))

    def proposal(self, run: Run) -> str:
        return self.settings.proposal_for(embedded_llm=run.endpoint.embedded)

    def header(self, run: Run, services: RatesServices) -> dict:
        inputs, c = self.inputs, self.inputs.constraint
        return {"model": inputs.model_name, "llm": {"proposal": self.proposal(run)},
                "protocol": {"calibration": inputs.calibration.description, "fitness": inputs.windows.description,
                             "seqlen": self.settings.seqlen},
                "constraint": {"mean_rate": c.target, "low": c.low, "high": c.high, "layers": c.layers,
                               "target_params": self.settings.target_params,
                               "uniform_params_fraction": inputs.uniform_params_fraction}}

    def build_graph(self, services: RatesServices, checkpointer):
        return build_graph(services, checkpointer=checkpointer)

    def graph_input(self, services: RatesServices, values: Optional[dict], run: Run) -> Optional[dict]:
        if values is None:
            return {"run_id": run.run_id}
        for member in values.get("history", []):
            services.prime(member["rates"], member["fitness"])
        return None

    def view(self, services: RatesServices, live: bool):
        return contextlib.nullcontext()

    def finalize(self, services: RatesServices, state: dict, run: Run) -> RatesSummary:
        summary = summarize(self.settings, self.inputs, state, run.seconds)
        usage = getattr(run.client, "usage_by_node", None)
        summary["llm_usage"] = usage() if usage is not None else {}
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary


def summarize(config: RatesConfig, inputs: SearchInputs, state: dict, seconds: float) -> RatesSummary:
    outcomes = state.get("outcomes", {})
    offspring = max(1, sum(outcomes.values()))
    return RatesSummary(
        run_dir=str(config.run_dir), target_params=config.target_params, mean_rate=inputs.constraint.target,
        uniform_params_fraction=inputs.uniform_params_fraction, budget=config.budget,
        evaluated=state.get("evaluated", 0), outcomes=outcomes, stop_reason=state.get("stop_reason"),
        llm_vector_used={k: round(outcomes.get(k, 0) / offspring, 3) for k in OUTCOMES},
        population=[{k: m[k] for k in ("id", "origin", "outcome", "fitness", "params_fraction")}
                    for m in state.get("population", [])],
        final=state.get("final", {}), seconds=round(seconds, 1))


def run_rates_search(config: RatesConfig, *, loaded: LoadedModel | None = None, llm: Any = None) -> dict:
    """Search, finalize, export; `loaded` and `llm` (an LLMClient-like object, journaled like the
    endpoint's) skip loading / starting them (Python users with a model in memory, tests)."""
    if config.resume:
        run_dir = resumable_run_dir(config.run_dir)
    else:
        run_dir = fresh_run_dir(config.run_dir, seed=config.seed, flag="--run-dir", resume_hint="--resume")
        config.save(run_dir)
    return run_search(RateSearch(config, loaded), run_dir, resumed=config.resume, client=llm)
