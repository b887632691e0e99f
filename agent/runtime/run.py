"""`run_search`: one run of a search mode in its run folder, fresh or resumed.

The order is the same for every mode: trace (with its at-most-once keys) -> the mode's
inputs -> the LLM endpoint (the user's, or the embedded server, stopped on every exit) and its
journal -> run_started / run_resumed -> the checkpointed graph -> the mode's summary ->
run_finished -> report/ (Markdown, HTML, plots; what `autoprune-agent report` writes). Anything raised on the way is traced as `run_failed` and re-raised unchanged;
SIGTERM unwinds like Ctrl-C so the embedded server is stopped and the failure traced.
`--resume` continues the same checkpoint thread: a kill loses at most the node in flight, and
the LLM journal answers any exchange that had finished.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from autoprune.agent.checkpoints import CHECKPOINTS, checked_state, project_checkpointer
from autoprune.agent.llm_journal import JournaledLLM
from autoprune.agent.runtime.endpoint import Endpoint, llm_endpoint
from autoprune.agent.runtime.folder import original_run_id
from autoprune.agent.runtime.mode import Run, SearchMode
from autoprune.agent.runtime.trace import RunTrace
from autoprune.safe_text import terminal_safe

GIVEN_CLIENT = Endpoint("(client given by the caller)", "", False)


def run_search(mode: SearchMode, run_dir: Path, *, resumed: bool, live: bool = False, client: Any = None) -> Any:
    """Run (or continue) `mode` in `run_dir` (already checked by runtime.folder); returns its summary.
    `client`: an LLMClient-like object to use instead of an endpoint (Python users, tests)."""
    trace = RunTrace(run_dir, mode.once_keys)
    run = Run(run_dir=run_dir, run_id=original_run_id(run_dir), resumed=resumed, trace=trace,
              from_seq=trace.last_seq)
    try:
        with sigterm_interrupts(), run.resources:
            summary = execute(mode, run, live=live, client=client)
    except BaseException as exc:  # recorded, then re-raised unchanged (bugs keep their traceback)
        trace.emit("run_failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                   kind=type(exc).__name__)
        raise
    write_run_report(run_dir)
    return summary


def execute(mode: SearchMode, run: Run, *, live: bool, client: Any) -> Any:
    mode.prepare(run)
    settings = mode.settings
    proposer = getattr(settings, "proposer", "llm")
    if client is None and proposer != "llm":       # --proposer mutation|random: no LLM call, so no server
        from autoprune.agent.proposer import NoLLMClient

        run.endpoint, client = Endpoint("(none)", f"no LLM (--proposer {proposer})", False), NoLLMClient(proposer)
    elif client is None:
        run.endpoint = run.resources.enter_context(llm_endpoint(settings.llm_base_url, settings.llm_model,
                                                                run.run_dir))
        from autoprune.agent.llm import LLMClient

        client = LLMClient(run.endpoint.base_url, run.endpoint.model, timeout=settings.llm_timeout_s)
    else:
        run.endpoint = GIVEN_CLIENT
    run.client = client
    run.llm = JournaledLLM(client, run.run_dir, run.trace, temperature=settings.temperature,
                           max_tokens=settings.llm_max_tokens)
    services = mode.connect(run)
    if callable(getattr(services, "close", None)):
        run.resources.callback(services.close)      # e.g. the evaluation pipeline: nothing new starts
    header = {"run_id": run.run_id, "mode": mode.name, "config": settings.model_dump(mode="json"),
              **mode.header(run, services)}
    header["llm"] = {**run.endpoint.to_dict(), **header.get("llm", {})}
    run.trace.emit("run_resumed" if run.resumed else "run_started", **header,
                   **({"from_seq": run.from_seq} if run.resumed else {}))
    with sqlite3.connect(run.run_dir / CHECKPOINTS, check_same_thread=False) as conn:
        state = drive(mode, services, conn, run, live=live)
    summary = mode.finalize(services, state, run)
    run.trace.emit("run_finished", summary=summary.to_dict())
    return summary


def drive(mode: SearchMode, services: Any, conn: sqlite3.Connection, run: Run, *, live: bool) -> dict:
    """Stream the graph on the run's checkpoint thread until it ends; the final state."""
    graph = mode.build_graph(services, project_checkpointer(conn))
    thread = {"configurable": {"thread_id": run.run_id}, "recursion_limit": 100_000}
    snapshot = graph.get_state(thread)
    values: Optional[dict] = None
    if snapshot.values:
        values = checked_state(dict(snapshot.values), mode.state_schema, run.run_dir)
        # Finished already: nothing to redo. (`next` alone is empty too when a kill came after a node's
        # writes were saved but before the next checkpoint: that node's task is still in `tasks`.)
        if not snapshot.next and not snapshot.tasks:
            return values
    graph_input = mode.graph_input(services, values, run)
    with mode.view(services, live) as view:
        for _ in graph.stream(graph_input, thread, stream_mode="updates", durability="sync"):
            if view is not None:
                view.state_changed(dict(graph.get_state(thread).values))
    return dict(graph.get_state(thread).values)


def write_run_report(run_dir: Path) -> None:
    """report/report.md + report.html + PNGs from the finished trace (what `report RUN_DIR` writes).
    A failure here loses nothing: the run folder is complete and `report` can be rerun."""
    from autoprune.reports.build import build_report

    try:
        build_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded
        print(f"warning: the report could not be written ({type(exc).__name__}: {terminal_safe(exc)}); "
              f"run `autoprune-agent report {run_dir}`", file=sys.stderr)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the run lasts (then the old handler returns)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
