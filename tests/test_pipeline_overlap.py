"""The evaluation pipeline (agent/pipeline.py) through the real graph, sandbox and scripted LLM server.

Two in-process searches on a tiny Llama, the same script and seed, pipeline depth 0 and 1,
stopped before the finale: the same candidates get the same verdicts; with depth 1 the LLM
writes candidate k+1 while candidate k is evaluated (the trace's timestamps say so), with
depth 0 never. Then the real CLI is killed (-9) while a candidate is in flight and resumed:
nothing is lost, nothing is evaluated or paid for twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_support import ScriptedLLM, agent_backend, default_replies, tiny_services
from llm_server_support import Fault, FaultyLLMServer, agent_reply
from rates_support import small_wikitext  # noqa: F401 - a fixture
from test_fault_kill_resume import (CLI, KillPoint, assert_no_exchange_paid_twice, assert_nothing_twice, at, events_of,
                                   kill_and_resume)

from autoprune.agent.archive import write_seeds
from autoprune.agent.state import initial_state
from autoprune.runlog.trace_file import read_trace

EXPRESSIONS = ["W.abs() * X.max_abs", "W.abs() * X.norm.sqrt()", "W.pow(2) * X.norm"]
LLM_DELAY_S = 1.0        # every LLM reply takes this long: a slow model, as the embedded one is on CPU


def search(run_dir: Path, depth: int, delay: float):
    """A budget-3 search stopped before the finale, each LLM reply `delay` s late: (state, the pending nodes, trace
    events)."""
    from langgraph.checkpoint.memory import InMemorySaver

    from autoprune.agent.graph import build_graph
    from test_agent_graph import tiny_llama_model

    llm = ScriptedLLM({**default_replies(), "write_code": [f"```python\n{e}\n```" for e in EXPRESSIONS]})
    llm.server.script = [Fault("ok", delay=delay)]
    services = tiny_services(tiny_llama_model(), run_dir, llm, budget=3, pipeline_depth=depth)
    seed_ids, records = write_seeds(services.run_dir)
    graph = build_graph(services, checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "p"}, "recursion_limit": 500}
    graph.invoke(initial_state("p", seed_ids, records), thread, interrupt_before=["finalize"])
    snapshot = graph.get_state(thread)
    services.close()
    return dict(snapshot.values), snapshot.next, read_trace(run_dir).events


@pytest.fixture(scope="module")
def both_depths(tmp_path_factory):
    agent_backend()                  # the real sandbox: Docker where an engine answers
    # the slow LLM only where a reply can overlap an evaluation: depth 0 waits for every one alike
    return {depth: search(tmp_path_factory.mktemp(f"depth{depth}"), depth, LLM_DELAY_S if depth else 0.0)
            for depth in (0, 1)}


def verdicts(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["id"], e["status"]) for e in events if e["type"] == "verdict"]


def test_depth_1_records_the_same_candidates_and_verdicts_as_depth_0(both_depths):
    (serial, serial_next, serial_events), (piped, piped_next, piped_events) = both_depths[0], both_depths[1]
    assert serial_next == piped_next == ("finalize",)           # the finale sees only recorded results
    assert piped["in_flight"] == [] and piped["queue"] == []
    assert verdicts(piped_events) == verdicts(serial_events)
    assert [v for v in verdicts(piped_events) if v[0].startswith("g")] == [
        ("g001-a0", "ok"), ("g002-a0", "ok"), ("g003-a0", "ok")]
    for cid, record in serial["candidates"].items():
        other = piped["candidates"][cid]
        assert (other["status"], other["fingerprint"], other.get("sent")) == (
            record["status"], record["fingerprint"], record.get("sent"))
        assert other.get("fitness") == pytest.approx(record.get("fitness"), rel=1e-4)
    assert piped["budget_used"] == serial["budget_used"] == 3 and piped["reflected"] == serial["reflected"] == 3
    nodes = lambda events: sorted(e["node"] for e in events if e["type"] == "llm_request")   # noqa: E731
    assert nodes(piped_events) == nodes(serial_events)            # the same LLM calls, no extra one
    submitted = [e["submitted"] for e in piped_events if e["type"] == "verdict" and e.get("submitted")]
    assert submitted == [1, 2, 3]


def overlapping_requests(events: list[dict]) -> list[tuple[str, dict]]:
    """(candidate id, LLM request) pairs where the request started while that candidate was evaluated."""
    spans = [(e["id"], e["started"], e["finished"]) for e in events if e["type"] == "verdict"]
    return [(cid, r) for r in events if r["type"] == "llm_request"
            for cid, started, finished in spans if started <= r["ts"] < finished]


def test_with_depth_1_the_llm_writes_the_next_candidate_while_the_current_one_is_evaluated(both_depths):
    _, _, serial_events = both_depths[0]
    _, _, events = both_depths[1]
    assert overlapping_requests(serial_events) == []
    overlaps = overlapping_requests(events)
    for k in (1, 2):
        verdict = next(e for e in events if e["type"] == "verdict" and e["id"] == f"g00{k}-a0")
        # the next generation's hypothesis was asked for before candidate k's verdict was recorded
        following = [r for cid, r in overlaps if cid == verdict["id"] and r["node"] == "hypothesise"]
        assert following and following[0]["seq"] < verdict["seq"], (k, overlaps)
        assert following[0]["seed"] % 100_000 // 100 == k + 1                  # generation k+1's seed
    llm_seconds = sum(e["seconds"] for e in events if e["type"] == "llm_response")
    assert llm_seconds >= 10 * LLM_DELAY_S                    # the server's delay: 10 calls in this search


@pytest.fixture
def llm_server():
    servers: list[FaultyLLMServer] = []
    yield lambda reply: servers.append(FaultyLLMServer(["ok"], reply=reply)) or servers[-1]
    for server in servers:
        server.close()


IN_FLIGHT_POINTS = [
    # verify has sent g001-a0 (running in the background) and checkpointed it as in flight; the graph is on
    # to the next hypothesis. Killed as a node starts, so no LLM request is cut between reply and journal.
    KillPoint("a candidate in flight, the next hypothesis starting", at("node_entered", node="hypothesise",
                                                                       generation=1)),
    KillPoint("still in flight after the resume, the next candidate starting",
              at("node_entered", node="write_code", generation=2)),
]


def test_a_run_killed_with_a_candidate_in_flight_resumes_and_loses_nothing(tmp_path, tiny_llama_dir, small_wikitext,
                                                                         llm_server, monkeypatch):  # noqa: F811
    import test_fault_kill_resume

    monkeypatch.setattr(test_fault_kill_resume, "RUN_LIMIT_S", 600)   # Docker legs on a shared machine
    server = llm_server(agent_reply)
    run_dir = tmp_path / "run"
    endpoint = ["--llm-base-url", server.base_url, "--llm-model", "scripted"]
    first = ["run", "--budget", "2", "--model", str(tiny_llama_dir), "--data", str(small_wikitext),
             "--out", str(run_dir), "--nsamples", "4", "--seqlen", "64", "--fitness-levels", "2,4",
             "--test-windows", "2", "--code-style", "expression", "--pipeline-depth", "1",
             "--sandbox", agent_backend(), "--json", *endpoint]
    assert CLI.is_file()
    hits = kill_and_resume(first, ["run", "--resume", str(run_dir), "--json", *endpoint], run_dir,
                           IN_FLIGHT_POINTS)
    assert all(hit is not None for hit in hits)

    events = events_of(run_dir)
    assert_nothing_twice(events, search_ids=lambda cid: cid.startswith("g"))
    resumed = [e["seq"] for e in events if e["type"] == "run_resumed"]
    first_verdict = next(e for e in events if e["type"] == "verdict" and e["id"] == "g001-a0")
    assert first_verdict["seq"] > resumed[-1]          # sent before both kills, recorded by the last leg
    submitted = [e["submitted"] for e in events if e["type"] == "verdict" and e.get("submitted")]
    assert submitted == [1, 2]
    summary = next(e for e in events if e["type"] == "run_finished")["summary"]
    assert summary["budget_used"] == 2
    assert_no_exchange_paid_twice(run_dir, events, server, kills=len(hits))
    if agent_backend() == "docker":     # the killed legs' warm containers were reaped by the next leg
        import docker

        from autoprune.sandbox.orphans import orphaned

        left = orphaned(docker.from_env())
        assert left == [], [c.labels for c in left]
