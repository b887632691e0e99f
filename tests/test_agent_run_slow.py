"""`autoprune-agent run` for real: embedded model, embedded LLM server, process sandbox.

The run is killed with SIGKILL while an LLM candidate is in flight, then
continued with `--resume`: it must finish, spend exactly the budget, and its
trace must hold every candidate once with exactly one verdict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from autoprune.runlog.trace_file import read_trace

from rates_support import small_wikitext  # noqa: F401 - a fixture: tokenizing all of WikiText-2 costs every leg

pytestmark = pytest.mark.slow
# Small enough for CI (the embedded models are the subject, not the protocol): 128-token windows from the first
# lines of WikiText-2, two test windows, a budget of 1 (the kill lands on the first LLM candidate, the resumed
# run with a new embedded server finishes it, reflects and runs the finale; a second generation would only
# repeat the search on the embedded LLM: several kills and candidates are tests/test_fault_kill_resume.py's).
SMALL = ["--nsamples", "4", "--seqlen", "128", "--fitness-levels", "2,4", "--test-windows", "2",
         "--llm-max-tokens", "64",
         # the refits and the SparseGPT / ALPS baselines have their own tests on tiny models (test_finale_refit)
         "--search-refit", "none", "--reconstruct", "obs", "--final-baselines", "wanda"]
BUDGET = 1


# One thread per process: on a shared, busy CPU two OpenMP threads per process run ~5x slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from autoprune.cli import main; main()", *args]


def wait_for_candidate_in_flight(run_dir: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Until the sandbox has an LLM-written candidate (or the search reaches reflect)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "trace.jsonl").is_file():
            events = read_trace(run_dir).events
            if any(e["type"] == "node_entered" and e["node"] in ("verify", "reflect") and e["generation"] >= 1
                   for e in events):
                return
        time.sleep(1.0)
    raise AssertionError("the run never reached an LLM candidate")


def stop_leftover_server(run_dir: Path) -> None:
    """After a failed assertion, do not leave the killed run's embedded server behind."""
    from autoprune.agent.runtime.endpoint import stop_stale_server

    stop_stale_server(run_dir)


def server_alive(run_dir: Path) -> bool:
    pid_file = run_dir / "embedded_llm_server.pid"
    if not pid_file.is_file():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.timeout(3600)      # the embedded LLM on a busy CPU: minutes per generation
def test_killed_run_resumes_and_finishes_without_lost_or_duplicated_candidates(tmp_path, small_wikitext):  # noqa: F811
    run_dir = tmp_path / "run"
    args = ["run", "--budget", str(BUDGET), "--sandbox", "process", "--data", str(small_wikitext), *SMALL,
            "--out", str(run_dir), "--json"]
    with (tmp_path / "killed-run.log").open("wb") as log:   # a pipe nobody reads could block the run
        proc = subprocess.Popen(cli(*args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=ENV)
    try:
        wait_for_candidate_in_flight(run_dir, proc, timeout=1800)
    except AssertionError:
        stop_leftover_server(run_dir)
        raise
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # the agent and its sandbox workers; the server has its own group
        proc.wait()
    assert not (run_dir / "report" / "report.md").exists()
    resumed = subprocess.run(cli("run", "--resume", str(run_dir), "--sandbox", "process", "--json"),  # confirmed again
                             capture_output=True, text=True,
                             timeout=2400, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    assert not server_alive(run_dir)            # the stale server was stopped, the new one too

    events = read_trace(run_dir).events
    types = Counter(e["type"] for e in events)
    assert types["run_started"] == 1 and types["run_resumed"] == 1 and types["run_finished"] == 1
    candidates = Counter(e["id"] for e in events if e["type"] == "candidate")
    verdicts = [e for e in events if e["type"] == "verdict"]
    assert all(n == 1 for n in candidates.values())
    assert Counter(e["id"] for e in verdicts) == Counter(set(e["id"] for e in verdicts))
    llm_verdicts = [e for e in verdicts if e["submitted"] is not None]
    assert {e["id"] for e in llm_verdicts} <= set(candidates)
    assert sorted(e["submitted"] for e in llm_verdicts) == list(range(1, summary["budget_used"] + 1))
    # every LLM candidate that was written got its verdict, unless the budget was spent first
    unsent = set(candidates) - {e["id"] for e in llm_verdicts}
    assert not unsent or summary["budget_used"] == BUDGET

    # the embedded server really answered (a server that crashes on every request would leave only fallbacks)
    assert any(e["type"] == "llm_response" and (e.get("text") or "").strip() for e in events)
    assert summary["best"]["id"] and summary["wanda_fitness"] > 1
    assert set(summary["test"]) >= {"dense", "uniform", "wanda"}
    report = Path(summary["report"]).read_text()
    assert "Wanda" in report and "Final perplexity" in report and (run_dir / "report" / "report.html").is_file()
    assert (run_dir / "model" / "config.json").is_file()
    assert sum(summary["verdicts"].values()) == len(verdicts)

    # The same real CLI run opens in the report builder and the replay UI (issue: replay/report on `run`).
    reported = subprocess.run(cli("report", str(run_dir), "--out", str(tmp_path / "report")),
                              capture_output=True, text=True, timeout=600, env=ENV)
    assert reported.returncode == 0, reported.stderr[-2000:]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Wanda" in html and "<img" in html
    assert list((tmp_path / "report").glob("*.png"))
    assert_replay_shows_the_run(run_dir, set(candidates))


def assert_replay_shows_the_run(run_dir, candidate_ids):
    import asyncio

    from textual.widgets import DataTable

    from autoprune.tui import ReplayApp

    async def drive():
        app = ReplayApp(run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            assert {"verify", "evaluate", "tournament", "finalize"} <= {s.node for s in app.live.view.steps}
            assert candidate_ids <= set(app.live.view.candidates)
            assert app.query_one("#candidates", DataTable).row_count == len(app.live.view.candidates)
    asyncio.run(drive())
