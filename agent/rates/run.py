"""One Self-Pruner rate search, from config to summary.

Run folder: config.json, trace.jsonl, checkpoints.sqlite (LangGraph's SqliteSaver, one
thread), stats_cache/, embedded_llm_server.log, model/ (the exported pruned model) and
summary.json. `resume=True` continues after the last checkpointed node.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from importlib.resources import files
from typing import Iterator

from autoprune.agent.checkpoints import CHECKPOINTS, checked_state, project_checkpointer
from autoprune.agent.llm import LLMClient
from autoprune.agent.llm_journal import JournaledLLM
from autoprune.agent.rates.config import RatesConfig
from autoprune.agent.rates.finale import make_finalizer
from autoprune.agent.rates.graph import build_graph
from autoprune.agent.rates.services import RatesServices
from autoprune.agent.rates.setup import SearchInputs, allocator_seeds, prepare_search
from autoprune.agent.rates.state import OUTCOMES, RatesState
from autoprune.agent.services import RunTrace
from autoprune.agent.trace import TraceWriter
from autoprune.errors import BadInputError
from autoprune.models import LoadedModel



def rates_prompt_set():
    """The templates in prompts/templates/rates/ as a prompt set named "rates"."""
    from autoprune.prompts.registry import load_folder

    return load_folder(files("autoprune.prompts") / "templates" / "rates", "rates")


@contextlib.contextmanager
def llm_endpoint(config: RatesConfig, *, given: bool = False) -> Iterator[tuple[str, str, bool]]:
    """(base_url, model, embedded): the user's endpoint, or the embedded LLM for the run's duration."""
    if given:
        yield "(client given by the caller)", "", False
        return
    if config.llm_base_url:
        yield config.llm_base_url, config.llm_model or "default", False
        return
    from autoprune.agent.embedded_server import embedded_llm_server

    with embedded_llm_server(log_dir=config.run_dir) as server:
        yield server.base_url, server.model, True


class RatesTrace(RunTrace):
    """The search's trace with at-most-once events across resumes: a node re-run after a kill
    announces, judges and scores a member once (a rejected proposal: one verdict per attempt)."""

    ONCE_KEYS = {**RunTrace.ONCE_KEYS, "verdict": ("id", "status", "attempt")}


def traced_llm(base_url: str, model: str, trace: RunTrace, timeout: float, run_dir) -> JournaledLLM:
    """The endpoint behind the run's LLM journal: a proposal asked again after a kill is answered
    from the journal, not paid twice; the journal traces every exchange, a failed one too."""
    return JournaledLLM(LLMClient(base_url, model, timeout=timeout, max_retries=2), run_dir, trace)


def check_run_dir(config: RatesConfig) -> None:
    has_run = (config.run_dir / CHECKPOINTS).is_file()
    if has_run and not config.resume:
        raise BadInputError(f"{config.run_dir} already holds a rate search: pass --resume or another --run-dir")
    if config.resume and not has_run:
        raise BadInputError(f"nothing to resume in {config.run_dir} (no {CHECKPOINTS})")


def make_services(config: RatesConfig, inputs: SearchInputs, llm: LLMClient, trace: TraceWriter,
                  proposal: str) -> RatesServices:
    return RatesServices(model=inputs.model, tokenizer=inputs.tokenizer, stats=inputs.stats, windows=inputs.windows,
                         constraint=inputs.constraint, llm=llm, trace=trace, prompts=rates_prompt_set(),
                         model_name=inputs.model_name, budget=config.budget, population_size=config.population,
                         max_repairs=config.max_repairs, llm_max_tokens=config.llm_max_tokens,
                         temperature=config.temperature, seed=config.seed, reconstruct=config.reconstruct,
                         importance=inputs.importance, proposal=proposal,
                         seeds=allocator_seeds(inputs.model, inputs.stats, inputs.constraint),
                         finalize=make_finalizer(config, inputs.corpus))


def announce_run(config: RatesConfig, inputs: SearchInputs, trace: TraceWriter, llm: tuple) -> None:
    c = inputs.constraint
    trace.emit("run_resumed" if config.resume else "run_started", run_id=config.run_dir.name, mode="rates",
               config=config.to_dict(), model=inputs.model_name,
               llm={"base_url": llm[0], "model": llm[1], "embedded": llm[2],
                    "proposal": config.proposal_for(embedded_llm=llm[2])},
               protocol={"calibration": inputs.calibration.description, "fitness": inputs.windows.description,
                         "seqlen": config.seqlen},
               constraint={"mean_rate": c.target, "low": c.low, "high": c.high, "layers": c.layers,
                           "target_params": config.target_params,
                           "uniform_params_fraction": inputs.uniform_params_fraction})


def drive(services: RatesServices, conn: sqlite3.Connection, thread_id: str) -> dict:
    graph = build_graph(services, checkpointer=project_checkpointer(conn))
    thread = {"configurable": {"thread_id": thread_id}, "recursion_limit": 100_000}
    snapshot = graph.get_state(thread)
    if snapshot.values:
        checked_state(snapshot.values, RatesState)
    # Finished already. (`next` alone is empty too when a kill came after a node's writes were
    # saved but before the next checkpoint: that node's task is still in `tasks`.)
    if snapshot.values and not snapshot.next and not snapshot.tasks:
        return dict(snapshot.values)
    for member in (snapshot.values or {}).get("history", []):
        services.prime(member["rates"], member["fitness"])
    graph_input = None if snapshot.values else {"run_id": thread_id}
    for _ in graph.stream(graph_input, thread, stream_mode="updates", durability="sync"):
        pass
    return dict(graph.get_state(thread).values)


def summarize(config: RatesConfig, inputs: SearchInputs, state: dict, seconds: float) -> dict:
    outcomes = state.get("outcomes", {})
    offspring = max(1, sum(outcomes.values()))
    return {"run_dir": str(config.run_dir), "target_params": config.target_params,
            "mean_rate": inputs.constraint.target, "uniform_params_fraction": inputs.uniform_params_fraction,
            "budget": config.budget, "evaluated": state.get("evaluated", 0), "outcomes": outcomes,
            "llm_vector_used": {k: round(outcomes.get(k, 0) / offspring, 3)
                                for k in OUTCOMES},
            "population": [{k: m[k] for k in ("id", "origin", "outcome", "fitness", "params_fraction")}
                           for m in state.get("population", [])],
            "final": state.get("final", {}), "seconds": round(seconds, 1)}


def run_rates_search(config: RatesConfig, *, loaded: LoadedModel | None = None, llm=None) -> dict:
    """Search, finalize, export; `loaded` and `llm` (an LLMClient-like object) skip loading /
    starting them (Python users with a model in memory, tests)."""
    started = time.perf_counter()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(config)
    if not config.resume:
        (config.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    trace = RatesTrace(config.run_dir)
    inputs = prepare_search(config, loaded)
    with llm_endpoint(config, given=llm is not None) as endpoint:
        llm = llm or traced_llm(endpoint[0], endpoint[1], trace, config.llm_timeout_s, config.run_dir)
        announce_run(config, inputs, trace, endpoint)
        services = make_services(config, inputs, llm, trace, config.proposal_for(embedded_llm=endpoint[2]))
        conn = sqlite3.connect(config.run_dir / CHECKPOINTS, check_same_thread=False)
        try:
            state = drive(services, conn, "rates")
        finally:
            conn.close()
    summary = summarize(config, inputs, state, time.perf_counter() - started)
    client = getattr(llm, "client", llm)           # the journal's endpoint client
    summary["llm_usage"] = client.usage_by_node() if hasattr(client, "usage_by_node") else {}
    (config.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    trace.emit("run_finished", summary=summary)
    return summary
