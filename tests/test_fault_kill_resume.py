"""The fault suite, process side: `kill -9` of the real CLI at chosen points, then `--resume`.

Ten kill points, one run per mode, on a tiny saved Llama, the scripted LLM server on loopback and the process
sandbox: the test watches trace.jsonl, sends SIGKILL when a chosen event appears (a node
entered, an LLM answer, a candidate written, a verdict, a fitness...), resumes, and kills
again at the next point, until the run finishes. Then the trace must show every candidate
evaluated once: no candidate id, source or fitness level twice, no LLM exchange paid twice,
and the budget counted once per candidate.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from llm_server_support import FaultyLLMServer, agent_reply
from rates_support import small_wikitext  # noqa: F401 - a fixture: all of WikiText-2 would dominate a leg

CLI = Path(sys.executable).parent / "autoprune-agent"
RUN_LIMIT_S = 150       # one leg (start or resume) of a tiny run; far more than it needs


def events_of(run_dir: Path) -> list[dict]:
    path = run_dir / "trace.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue        # the half line a kill leaves
    return events


@dataclass
class KillPoint:
    """Kill when the first event after `after_seq` matching `when` is in the trace."""

    label: str
    when: Callable[[dict], bool]


def at(type_: str, **fields) -> Callable[[dict], bool]:
    return lambda e: e.get("type") == type_ and all(
        (v(e.get(k)) if callable(v) else e.get(k) == v) for k, v in fields.items())


class TraceTail:
    """The trace's new complete lines since the last look: polling every 20 ms re-reads nothing (parsing
    the whole trace 50 times a second took CPU from the run under test on a 2-core machine)."""

    def __init__(self, run_dir: Path):
        self.path, self.offset, self.partial = run_dir / "trace.jsonl", 0, b""
        self.offset = self.path.stat().st_size if self.path.is_file() else 0     # only what this leg writes

    def new_events(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue        # the half line a kill leaves, completed by the resumed writer
        return events


def leg(args: list[str], run_dir: Path, log: Path, point: Optional[KillPoint]) -> Optional[dict]:
    """Run the CLI once; SIGKILL it at `point` (returns the event it was killed at), or let it finish."""
    after = max((e.get("seq", 0) for e in events_of(run_dir)), default=0)
    tail = TraceTail(run_dir)
    with log.open("a") as out:
        proc = subprocess.Popen([str(CLI), *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_LIMIT_S
        while time.monotonic() < deadline:
            if point is not None:
                hit = next((e for e in tail.new_events() if e.get("seq", 0) > after and point.when(e)), None)
                if hit is not None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    return hit
            if proc.poll() is not None:
                assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                assert point is None, f"the run finished before the kill point {point.label}"
                return None
            time.sleep(0.02)
        raise AssertionError(f"{args[0]} still running after {RUN_LIMIT_S} s:\n{log.read_text()[-3000:]}")
    finally:
        with_group_gone(proc)


def with_group_gone(proc: subprocess.Popen) -> None:
    """What the killed run left running in its own process group (a sandbox child) goes too."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def kill_and_resume(first: list[str], resume: list[str], run_dir: Path, points: list[KillPoint]) -> list[dict]:
    """Start, kill at each point in turn (resuming in between), then resume to the end."""
    log = run_dir.parent / f"{run_dir.name}.log"
    hits = [leg(first, run_dir, log, points[0])]
    for point in points[1:]:
        hits.append(leg(resume, run_dir, log, point))
    assert leg(resume, run_dir, log, None) is None
    return hits


def assert_nothing_twice(events: list[dict], *, search_ids: Callable[[str], bool]) -> None:
    candidates = [e for e in events if e["type"] == "candidate"]
    ids = Counter(e["id"] for e in candidates)
    assert max(ids.values()) == 1, f"candidate written twice: {ids}"
    sources = Counter(e["source"] for e in candidates)
    assert max(sources.values()) == 1, f"the same source twice: {sources}"
    fitness = Counter((e["id"], e.get("level")) for e in events if e["type"] == "fitness")
    assert max(fitness.values()) == 1, f"evaluated twice: {fitness}"
    ok = Counter(e["id"] for e in events if e["type"] == "verdict" and e.get("status") == "ok")
    assert max(ok.values()) == 1, f"verdict twice: {ok}"
    assert {e["id"] for e in candidates if search_ids(e["id"])} <= {e["id"] for e in events if e["type"] == "verdict"}
    finished = [e for e in events if e["type"] == "run_finished"]
    assert len(finished) == 1 and events[-1]["type"] == "run_finished"


@pytest.fixture
def llm_server():
    servers = []

    def start(reply):
        servers.append(FaultyLLMServer(["ok"], reply=reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def paid_exchanges(events: list[dict]) -> Counter:
    """Journal key -> how often that LLM exchange was paid for (answered by the server, not the journal)."""
    return Counter(e["key"] for e in events if e["type"] == "llm_response" and not e.get("cached")
                   and not e.get("error"))


def assert_no_exchange_paid_twice(run_dir: Path, events: list[dict], server, *, kills: int) -> None:
    """No LLM exchange paid twice: a request asked again after a kill is answered from the journal.
    SIGKILL lands up to one poll (~20 ms) after the kill point's trace line, so a kill may cut the one
    request then in flight (served, never journaled) or land between its journal line and its trace line
    (answered from the journal on resume, never paid again): at most one exchange per kill goes unrecorded."""
    paid = paid_exchanges(events)
    assert max(paid.values()) == 1, paid
    journal = [json.loads(line)["key"] for line in (run_dir / "llm_journal.jsonl").read_text().splitlines() if line]
    assert len(journal) == len(set(journal)) and set(paid) <= set(journal) and not server.errors
    assert len(journal) <= len(server.served) <= len(journal) + kills, (len(server.served), len(journal))
    assert len(journal) - kills <= len(paid)


AGENT_POINTS = [
    KillPoint("a seed's verdict (sandbox done, checkpoint not yet)", at("verdict", id="seed-ria")),
    KillPoint("the hypothesis answered", at("llm_response", node="hypothesise")),
    KillPoint("the first candidate written", at("candidate")),
    KillPoint("its verdict", at("verdict", id=lambda v: str(v).startswith("g0"))),
    KillPoint("reflect entered", at("node_entered", node="reflect")),
    KillPoint("the finale running", at("node_entered", node="finalize")),
]


def test_agent_run_killed_at_six_points_resumes_to_the_end_with_nothing_twice(tmp_path, tiny_llama_dir,
                                                                                 small_wikitext, llm_server):
    server = llm_server(agent_reply)
    run_dir = tmp_path / "run"
    endpoint = ["--llm-base-url", server.base_url, "--llm-model", "scripted", "--sandbox", "process"]
    first = ["run", "--budget", "2", "--model", str(tiny_llama_dir), "--data", str(small_wikitext),
             "--out", str(run_dir), "--nsamples", "4", "--seqlen", "64", "--fitness-levels", "2,4",
             "--test-windows", "2", "--code-style", "expression", "--json", *endpoint,
             # the finale is killed and rerun like any node; its baselines and refit (near half its time here) are
             # tests/test_finale_refit.py's
             "--final-baselines", "none", "--reconstruct", "none"]
    hits = kill_and_resume(first, ["run", "--resume", str(run_dir), "--json", *endpoint], run_dir, AGENT_POINTS)
    assert all(hit is not None for hit in hits)

    events = events_of(run_dir)
    assert_nothing_twice(events, search_ids=lambda cid: cid.startswith("g"))
    assert len([e for e in events if e["type"] == "run_resumed"]) == len(AGENT_POINTS)
    # the budget: each search candidate sent once, numbered 1..budget in the order sent
    submitted = [e["submitted"] for e in events if e["type"] == "verdict" and e.get("submitted")]
    assert submitted == list(range(1, len(submitted) + 1)) and len(submitted) == 2
    summary = next(e for e in events if e["type"] == "run_finished")["summary"]
    assert summary["budget_used"] == 2 and summary["best"]
    assert_no_exchange_paid_twice(run_dir, events, server, kills=len(hits))


def rates_reply(body: dict) -> str:
    """A child vector for search-rates (vector proposals) at the asked mean, the same for the same request."""
    prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    layers = int(re.search(r"JSON list of (\d+) numbers", prompt).group(1))
    mean = float(re.search(r"keeping the mean at (\d+\.\d+)", prompt).group(1))
    digest = sum(prompt.encode()) + int(body.get("seed") or 0)
    step = 0.01 * (1 + digest % 9)
    rates = [round(mean + (step if i % 2 == 0 else -step), 4) for i in range(layers)]
    return f"Parents #1 and #2. Child: {json.dumps(rates)}"


RATES_POINTS = [
    KillPoint("a seed evaluated", at("fitness", id=lambda v: str(v).startswith("seed-"))),
    KillPoint("the first proposal answered", at("llm_response", node="propose")),
    KillPoint("the first child evaluated", at("fitness", id="g1")),
    KillPoint("the finale running", at("node_entered", node="finalize")),
]


def test_rate_search_killed_at_four_points_resumes_to_the_end_with_nothing_twice(tmp_path, tiny_llama_dir,
                                                                                 small_wikitext, llm_server):
    server = llm_server(rates_reply)
    run_dir = tmp_path / "rates"
    args = ["search-rates", "--budget", "3", "--target-params", "0.7", "--run-dir", str(run_dir),
            "--model", str(tiny_llama_dir), "--data", str(small_wikitext), "--population", "3", "--seqlen", "64",
            "--nsamples", "4", "--fitness-windows", "2", "--eval-seqlen", "64", "--eval-windows", "2",
            "--llm-base-url", server.base_url, "--llm-model", "scripted", "--no-export", "--json"]
    hits = kill_and_resume(args, [*args, "--resume"], run_dir, RATES_POINTS)
    assert all(hit is not None for hit in hits)

    events = events_of(run_dir)
    assert_nothing_twice(events, search_ids=lambda cid: cid.startswith("g"))
    summary = next(e for e in events if e["type"] == "run_finished")["summary"]
    assert summary["evaluated"] == 3
    children = [e["id"] for e in events if e["type"] == "candidate" and not e["id"].startswith("seed-")]
    assert children == ["g1", "g2", "g3"]
    assert_no_exchange_paid_twice(run_dir, events, server, kills=len(hits))
