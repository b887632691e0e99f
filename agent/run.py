"""`run_agent`: one agent run in its run folder, fresh or resumed.

Run folder (DESIGN §7): config.json, trace.jsonl, candidates/, checkpoints.sqlite
(LangGraph's SqliteSaver, one thread per run), llm_journal.jsonl, bundle/,
report/ (Markdown, HTML, plots), model/ (the pruned model). `--resume` reopens the same thread: the
graph continues after the last checkpointed node, so a kill loses at most the
node in flight, and the LLM journal answers any exchange that had finished.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

from autoprune.agent.archive import write_seeds
from autoprune.agent.budget import Budget
from autoprune.agent.checkpoints import CHECKPOINTS, checked_state, project_checkpointer
from autoprune.agent.config import RunConfig, resume_config
from autoprune.agent.finale import Finale
from autoprune.agent.graph import build_graph
from autoprune.agent.live import LiveView
from autoprune.agent.llm_journal import JournaledLLM
from autoprune.agent.services import AgentServices, CandidateRunner, RunContext, RunTrace
from autoprune.agent.setup import prepare, profile_text, run_device
from autoprune.agent.state import AgentState, initial_state
from autoprune.agent.summary import RunSummary, summarise
from autoprune.errors import BadInputError
from autoprune.safe_text import terminal_safe

SERVER_PID_FILE = "embedded_llm_server.pid"
PROCESS_SANDBOX_WARNING = ("sandbox backend 'process': candidates run as local subprocesses with rlimits and "
                           "the static gate only, without container isolation")


def new_run_dir(config: RunConfig) -> Path:
    if config.out is not None:
        folder = Path(config.out).expanduser()
        if folder.exists() and any(folder.iterdir()):
            raise BadInputError(f"--out {folder} exists and is not empty (use --resume {folder} to continue it)")
    else:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        folder = Path("runs") / f"{stamp}-s{config.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def llm_endpoint(config: RunConfig, run_dir: Path) -> Iterator[tuple[str, str, bool]]:
    """(base_url, model, embedded): the user's endpoint, or the embedded server for the run's duration."""
    if config.llm_base_url:
        yield config.llm_base_url, config.llm_model or "default", False
        return
    from autoprune.agent.embedded_server import embedded_llm_server

    stop_stale_server(run_dir)
    with embedded_llm_server(log_dir=run_dir) as server:
        (run_dir / SERVER_PID_FILE).write_text(str(server.pid))
        try:
            yield server.base_url, server.model, True
        finally:
            (run_dir / SERVER_PID_FILE).unlink(missing_ok=True)


def stop_stale_server(run_dir: Path) -> None:
    """A run killed with -9 cannot stop its embedded server: the resumed run does it."""
    path = run_dir / SERVER_PID_FILE
    if not path.is_file():
        return
    try:
        pid = int(path.read_text(encoding="ascii", errors="replace")[:20].strip())
    except (OSError, ValueError):
        pid = 0
    if pid > 1 and is_embedded_server(pid):     # still ours (the folder may name any pid): stop its group
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            if wait_gone(pid, grace):
                break
    path.unlink(missing_ok=True)


def is_embedded_server(pid: int) -> bool:
    """`pid` leads its own process group and runs `transformers serve` on loopback (agent/embedded_server.py)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        leads_group = os.getpgid(pid) == pid
    except (OSError, ProcessLookupError):
        return False
    return leads_group and b"serve" in args and b"--host" in args and \
        args[args.index(b"--host") + 1:args.index(b"--host") + 2] == [b"127.0.0.1"]


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower():
                return True
        except OSError:
            return True     # gone
        time.sleep(0.2)
    return False


def sandbox_limits(config: RunConfig):
    from autoprune.sandbox.verdict import SandboxLimits

    return SandboxLimits(timeout_s=config.candidate_timeout_s, gpus=config.gpus)


@contextlib.contextmanager
def evaluation_executor(config: RunConfig, prepared, runner: CandidateRunner):
    """The run's executor (None for serial runs), closed when the run ends, also on errors.
    Its workers rebuild the run's model, fitness windows and sandbox slot from a picklable spec."""
    if not config.parallel:
        yield None
        return
    from autoprune.agent.executors import WorkerSpec, make_executor

    spec = WorkerSpec(bundle_dir=str(prepared.bundle.folder.resolve()), model=config.model, data=config.data,
                      seqlen=config.seqlen, levels=tuple(prepared.fitness.levels), sparsity=config.sparsity,
                      pattern=config.pattern, backend=config.sandbox, limits=runner.limits, seed=config.seed,
                      device=run_device(config))
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


def build_services(config: RunConfig, run_dir: Path, trace: RunTrace, prepared, llm_client, llm_words: str,
                   code_style: str) -> AgentServices:
    from autoprune.prompts.registry import get_prompt_set

    runner = CandidateRunner(prepared.bundle, config.sparsity_pattern, config.sparsity, config.sandbox,
                             limits=sandbox_limits(config))
    llm = JournaledLLM(llm_client, run_dir, trace, temperature=config.temperature, max_tokens=config.llm_max_tokens)
    context = RunContext(model_name=prepared.loaded.name, model_profile=profile_text(prepared.profile),
                         code_style=code_style, extras={"llm": llm_words,
                                                        "calibration": prepared.calibration.description})
    finale = Finale(model=prepared.loaded.model, tokenizer=prepared.loaded.tokenizer,
                    calibration=prepared.calibration, stats=prepared.stats, runner=runner, fitness=prepared.fitness,
                    test_windows_fn=lambda: prepared.test_windows(config), config=config, run_dir=run_dir)
    budget = Budget(config.budget, config.llm_call_cap, config.token_cap)
    return AgentServices(config=config, run_dir=run_dir, trace=trace, llm=llm, prompts=get_prompt_set(config.prompts),
                         sandbox=runner, fitness=prepared.fitness, budget=budget, context=context, finale=finale)


def run_agent(config: Optional[RunConfig] = None, *, resume: Optional[Path] = None, live: bool = True,
              confirm: Optional[dict] = None) -> RunSummary:
    """Run (or, with `resume`, continue) the agent; returns the summary `--json` prints.
    `confirm`: with `resume`, the endpoint / sandbox / executor settings the caller passes again
    (agent.config.RESUME_CONFIRMED); a run folder that sets any of them otherwise is refused."""
    started = time.perf_counter()
    if resume is not None:
        run_dir = Path(resume).expanduser()
        config = resume_config(run_dir, confirm)
    elif config is None:
        raise BadInputError("run_agent needs a RunConfig or a run folder to resume")
    else:
        run_dir = new_run_dir(config)
        config.save(run_dir)
    trace = RunTrace(run_dir)
    try:
        stop_on_sigterm()
        return execute(config, run_dir, trace, resumed=resume is not None, live=live, started=started)
    except BaseException as exc:  # recorded, then re-raised unchanged (bugs keep their traceback)
        trace.emit("run_failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                   kind=type(exc).__name__)
        raise


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the embedded server is stopped and the failure traced."""
    import threading

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def execute(config: RunConfig, run_dir: Path, trace: RunTrace, *, resumed: bool, live: bool,
            started: float) -> RunSummary:
    from autoprune.agent.codegen import resolve_code_style
    from autoprune.agent.llm import LLMClient

    from_seq = trace.last_seq
    if config.sandbox == "process":
        trace.emit("note", text=PROCESS_SANDBOX_WARNING)
    prepared = prepare(config, run_dir)
    run_id = original_run_id(run_dir)
    with contextlib.ExitStack() as stack:
        base_url, llm_model, embedded = stack.enter_context(llm_endpoint(config, run_dir))
        style = resolve_code_style(config.code_mode, embedded_llm=embedded)
        client = LLMClient(base_url, llm_model, timeout=config.llm_timeout_s)
        services = build_services(config, run_dir, trace, prepared, client, f"{llm_model} at {base_url}", style)
        services.executor = stack.enter_context(evaluation_executor(config, prepared, services.sandbox))
        header = {"run_id": run_id, "config": config.model_dump(mode="json"), "model": prepared.loaded.name,
                  "llm": {"base_url": base_url, "model": llm_model, "embedded": embedded},
                  "protocol": {"calibration": prepared.calibration.description,
                               "fitness": prepared.fitness.describe(), "levels": prepared.fitness.levels,
                               "seqlen": config.seqlen}}
        trace.emit("run_resumed" if resumed else "run_started", **header, **({"from_seq": from_seq} if resumed else {}))
        with sqlite3.connect(run_dir / CHECKPOINTS, check_same_thread=False) as conn:
            state = drive_graph(services, conn, run_id, resumed=resumed, live=live)
    summary = summarise(state, run_dir, config, wall_s=time.perf_counter() - started)
    trace.emit("run_finished", summary=summary.to_dict())
    write_run_report(run_dir)
    return summary


def write_run_report(run_dir: Path) -> None:
    """report/report.md + report.html + PNGs from the finished trace (what `report RUN_DIR` writes).
    A failure here loses nothing: the run folder is complete and `report` can be rerun."""
    from autoprune.reports.build import build_report

    try:
        build_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded
        print(f"warning: the report could not be written ({type(exc).__name__}: {terminal_safe(exc)}); "
              f"run `autoprune-agent report {run_dir}`", file=sys.stderr)


def original_run_id(run_dir: Path) -> str:
    """The id the run started with (its checkpoint thread), even if the folder was renamed since."""
    from autoprune.agent.trace import read_trace

    if (run_dir / "trace.jsonl").is_file():
        for event in read_trace(run_dir).events:
            if event["type"] == "run_started":
                return str(event["run_id"])
    return run_dir.name


def drive_graph(services: AgentServices, conn: sqlite3.Connection, run_id: str, *, resumed: bool, live: bool) -> dict:
    graph = build_graph(services, checkpointer=project_checkpointer(conn))
    thread = {"configurable": {"thread_id": run_id}, "recursion_limit": 100_000}
    snapshot = graph.get_state(thread)
    # Finished already: nothing to redo. (`next` alone is empty too when a kill came after a node's
    # writes were saved but before the next checkpoint: that node's task is still in `tasks`.)
    if snapshot.values:
        checked_state(snapshot.values, AgentState, services.run_dir)
    if resumed and snapshot.values and not snapshot.next and not snapshot.tasks:
        return dict(snapshot.values)
    if snapshot.values:
        for cid, rec in snapshot.values.get("candidates", {}).items():
            for values in rec.get("nll", {}).values():
                services.fitness.prime(cid, values)
        graph_input = None
    else:
        seed_ids, records = write_seeds(services.run_dir)
        graph_input = initial_state(run_id, seed_ids, records)
    with LiveView(services.budget, enabled=live) as view:
        services.on_update = view.node_started
        for _ in graph.stream(graph_input, thread, stream_mode="updates", durability="sync"):
            view.state_changed(dict(graph.get_state(thread).values))
    return dict(graph.get_state(thread).values)
