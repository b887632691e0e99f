"""The LangGraph agent on a tiny Llama with the real sandbox (Docker where an engine answers, see
agent_support.agent_backend), fitness, prompts and checkpointer.

Only the LLM is scripted. One module-scoped run, whole finale included, feeds several assertions (the Docker
sandbox's among them where it ran in Docker); a second run is interrupted inside the sandbox and resumed from
the SQLite checkpoint. Tests about the search run the finale lean (agent_support.LEAN_FINALE).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections import Counter

import pytest
import torch

from autoprune.agent.archive import WANDA_ID, metric_fingerprint, write_seeds
from autoprune.agent.graph import build_graph
from autoprune.agent.nodes.verify import verify
from autoprune.agent.nodes.write_code import write_code
from autoprune.agent.state import initial_state
from autoprune.runlog.trace_file import read_trace

from agent_support import GOOD_EXPRESSION, LEAN_FINALE, ScriptedLLM, agent_backend, default_replies, tiny_services
from conftest import tiny_llama_model


def start(services, run_id="t"):
    seed_ids, records = write_seeds(services.run_dir)
    return initial_state(run_id, seed_ids, records)


def budget_2_run(run_dir, backend=None):
    """The default script with a budget of 2 (a crash, its repair), the whole finale: (state, services, llm)."""
    llm = ScriptedLLM(default_replies())
    services = tiny_services(tiny_llama_model(), run_dir, llm, budget=2, backend=backend)
    state = build_graph(services).invoke(start(services), {"recursion_limit": 500})
    return state, services, llm


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return budget_2_run(tmp_path_factory.mktemp("agent-run"))


def test_search_spends_exactly_the_budget_and_repairs_with_the_exact_error(finished_run):
    state, services, llm = finished_run
    assert state["budget_used"] == 2
    assert state["verdicts"] == {"ok": 4, "crashed": 1}        # 3 seeds + the repaired candidate
    crashed = state["candidates"]["g001-a0"]
    assert crashed["status"] == "crashed" and "score() raised" in crashed["message"]
    repair_turn = [m for node, m in llm.requests if node == "write_code"][1]
    assert "score() raised" in repair_turn[-1]["content"]
    assert state["candidates"]["g001-a1"]["parent"] == "g001-a0"
    assert state["stop_reason"].startswith("candidate budget spent")


def test_tournament_and_reflection_reach_the_prompts(finished_run):
    state, _, llm = finished_run
    assert WANDA_ID in state["leaderboard"] and set(state["archive"]) <= set(state["leaderboard"])
    wanda = state["candidates"][WANDA_ID]
    assert wanda["level"] == 1 and len(wanda["nll"]["1"]) == 4        # the reference climbs every level
    insights = state["insights"]
    assert "rms-input" in insights["hypotheses"] and insights["lessons"]["rms-input"]
    hypothesise_prompt = [m for node, m in llm.requests if node == "hypothesise"][0][-1]["content"]
    assert "perplexity" in hypothesise_prompt                          # the seeds' archive is shown


def test_finale_reports_allocations_on_test_and_exports_a_loadable_model(finished_run):
    from transformers import LlamaForCausalLM

    state, services, _ = finished_run
    final = state["final"]
    assert set(final["test"]) >= {"dense", "uniform", "wanda", "sparsegpt", "alps"}
    assert final["winner"]["id"] == state["leaderboard"][0]
    # SDSA reads the per-block skew of log |W|: the blocks get different sparsities
    assert len(set(final["sdsa"]["block_sparsity"])) == 2 and final["sdsa"]["source"] == "weight"
    from autoprune.reports import build_report

    report = build_report(services.run_dir).markdown.read_text()    # what the CLI writes after the run
    assert "Wanda" in report and "sdsa" in report and final["winner"]["id"] in report
    assert "vs SparseGPT" in report                                    # the winner next to the baselines, on test
    exported = LlamaForCausalLM.from_pretrained(final["export"])
    down = exported.model.layers[0].mlp.down_proj.weight
    assert 0.3 < float((down == 0).float().mean()) < 0.7


def test_trace_records_every_candidate_once(finished_run):
    _, services, _ = finished_run
    events = read_trace(services.run_dir).events
    candidates = Counter(e["id"] for e in events if e["type"] == "candidate")
    verdicts = Counter(e["id"] for e in events if e["type"] == "verdict")
    assert set(candidates) == {"g001-a0", "g001-a1"} and max(candidates.values()) == 1
    assert max(verdicts.values()) == 1 and len(verdicts) == 5
    assert events[-1]["type"] == "node_left" and events[-1]["node"] == "finalize"


def interrupt_when_sandboxing(services, run_dir, cid: str) -> None:
    """Ctrl-C for real: SIGINT to this process as the sandbox starts on `cid` (its run in flight). The
    check sits in the sandbox call itself, so the interrupt cannot come too late on a fast sandbox."""
    real_run = services.sandbox.run

    def latest_candidate() -> str | None:
        lines = (run_dir / "trace.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
        events = [json.loads(line) for line in lines if line.endswith("}")]
        return next((e["id"] for e in reversed(events) if e["type"] == "candidate"), None)

    def run_then_interrupt(source, **kwargs):
        if latest_candidate() == cid:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)                   # the interrupt lands while the candidate is in the sandbox
        return real_run(source, **kwargs)

    services.sandbox.run = run_then_interrupt


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test: a suite started in the background (`pytest &` in a
    non-interactive shell) inherits SIGINT ignored, and then no KeyboardInterrupt would come."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupted_run_resumes_from_the_checkpoint(tmp_path, ctrl_c_raises):
    from langgraph.checkpoint.sqlite import SqliteSaver

    model, thread = tiny_llama_model(), {"configurable": {"thread_id": "r"}, "recursion_limit": 500}
    llm = ScriptedLLM(default_replies())
    services = tiny_services(model, tmp_path, llm, budget=2, **LEAN_FINALE)
    interrupt_when_sandboxing(services, tmp_path, "g001-a1")            # the 2nd LLM candidate, in flight
    with sqlite3.connect(tmp_path / "checkpoints.sqlite", check_same_thread=False) as conn:
        with pytest.raises(KeyboardInterrupt):
            build_graph(services, SqliteSaver(conn)).invoke(start(services, "r"), thread)
    assert not [e for e in read_trace(tmp_path).events if e["type"] == "verdict" and e["id"] == "g001-a1"]
    calls_before = len(llm.requests)
    resumed = tiny_services(model, tmp_path, llm, budget=2, **LEAN_FINALE)   # a fresh process: new services
    with sqlite3.connect(tmp_path / "checkpoints.sqlite", check_same_thread=False) as conn:
        state = build_graph(resumed, SqliteSaver(conn)).invoke(None, thread)
    assert state["budget_used"] == 2 and state["final"] is not None
    # only reflect was still to come: no finished LLM call was made again
    assert [node for node, _ in llm.requests[calls_before:]] == ["reflect"]
    events = read_trace(tmp_path).events
    verdicts = Counter(e["id"] for e in events if e["type"] == "verdict")
    candidates = Counter(e["id"] for e in events if e["type"] == "candidate")
    assert set(candidates) == {"g001-a0", "g001-a1"} and max(candidates.values()) == 1
    assert set(verdicts) == set(candidates) | {"seed-wanda", "seed-ria", "seed-magnitude"}
    assert max(verdicts.values()) == 1


def test_write_code_alone_turns_an_unusable_reply_into_a_repair(tmp_path, tiny_llama):
    llm = ScriptedLLM({"write_code": ["I think weights are important."]})
    services = tiny_services(tiny_llama, tmp_path, llm)
    state = {**start(services), "generation": 1, "hypothesis": {"name": "h", "statement": "s", "generation": 1},
             "repairs": 0, "queue": []}
    update = write_code(state, services)
    assert "queue" not in update and update["repairs"] == 1 and "expression" in update["last_error"]
    assert update["llm_calls"] == 1 and "candidates" not in update     # nothing sent, nothing budgeted


def test_verify_alone_stores_verified_masks_for_a_seed(tmp_path, tiny_llama):
    from autoprune.agent.mask_files import load_masks

    services = tiny_services(tiny_llama, tmp_path, ScriptedLLM({}))
    state = start(services)
    update = verify(state, services)
    record = update["candidates"][WANDA_ID]
    assert record["status"] == "ok" and update["budget_used"] == 0 and update["pending_evals"] == [[WANDA_ID, 0]]
    masks = load_masks(tmp_path / record["masks_path"])
    assert set(masks) == set(services.sandbox.bundle.names)
    assert update["queue"] == ["seed-ria", "seed-magnitude"]


@pytest.fixture(scope="module")
def docker_run(request, tmp_path_factory):
    """The finished run where it ran in Docker (the agent tests' sandbox wherever an engine answers), else the
    same run again with the Docker sandbox."""
    from sandbox_support import require_docker_image

    require_docker_image()
    if agent_backend() == "docker":
        return request.getfixturevalue("finished_run")
    return budget_2_run(tmp_path_factory.mktemp("docker-run"), backend="docker")


@pytest.mark.docker
def test_graph_runs_with_the_docker_sandbox(docker_run):
    state, services, _ = docker_run
    assert services.config.sandbox == services.sandbox.backend == "docker"
    assert state["verdicts"] == {"ok": 4, "crashed": 1} and state["budget_used"] == 2
    assert "score() raised" in state["candidates"]["g001-a0"]["message"]      # the crash, reported from the container
    assert state["final"]["test"]["uniform"] > 1
    verdicts = [e for e in read_trace(services.run_dir).events if e["type"] == "verdict"]
    assert {e["id"] for e in verdicts} == {"seed-wanda", "seed-ria", "seed-magnitude", "g001-a0", "g001-a1"}


def test_finale_obs_reconstruction_scores_the_winner_and_restores_dense_weights(finished_run):
    from autoprune.agent.finale import Variant
    from autoprune.agent.mask_files import load_masks
    from agent_support import random_windows

    state, services, _ = finished_run
    finale, model = services.finale, services.finale.model
    winner = state["candidates"][state["leaderboard"][0]]
    masks = load_masks(services.run_dir / winner["masks_path"])
    name = next(iter(masks))
    dense = model.get_submodule(name).weight.detach().clone()
    variant = Variant("uniform", [0.5, 0.5], masks=masks, group=winner.get("group", "row"))
    windows = random_windows(3, seed=4)
    with finale.reconstructed(variant):
        inside = model.get_submodule(name).weight.detach().clone()
        reconstructed = finale.test_ppl(None, windows)
    keep = masks[name]
    assert not inside[~keep].any()                                     # pruned weights are zero
    assert not torch.equal(inside[keep], dense[keep])                  # survivors were updated (OBS)
    assert 1 < reconstructed < float("inf")
    assert torch.equal(model.get_submodule(name).weight, dense)
    assert reconstructed <= state["final"]["test"]["uniform"] * 1.05     # OBS should not hurt much


def test_duplicates_cost_no_fitness_and_go_back_to_the_llm(tmp_path):
    """A metric that prunes exactly like an earlier one (identical masks) is not evaluated; the same
    metric written twice is not even sent to the sandbox. Both come back as repair errors."""
    # Both rank like Wanda in exact arithmetic, through a call the rank signature does not model (clamp),
    # so they reach the sandbox and its mask comparison.
    same_masks_as_wanda = "```python\nW.abs() * X.norm.clamp(min=0)\n```"
    ranks_like_wanda = "```python\nW.pow(2) * X.sq_mean.clamp(min=0)\n```"   # (|W|·‖X‖)² / n, rounded apart
    replies = {**default_replies(), "write_code": [same_masks_as_wanda, ranks_like_wanda, GOOD_EXPRESSION,
                                                   GOOD_EXPRESSION, "```python\nW.abs().sqrt() * X.norm\n```"]}
    llm = ScriptedLLM(replies)
    services = tiny_services(tiny_llama_model(), tmp_path, llm, budget=4, mutate_repeats=False, **LEAN_FINALE)
    state = build_graph(services).invoke(start(services), {"recursion_limit": 500})
    twin, near = state["candidates"]["g001-a0"], state["candidates"]["g001-a1"]
    assert twin["status"] == "duplicate" and WANDA_ID in twin["message"] and twin.get("fitness") is None
    assert near["status"] == "duplicate" and "same weights as seed-wanda" in near["message"]
    assert not {"g001-a0", "g001-a1"} & set(state["leaderboard"]) and state["verdicts"]["duplicate"] == 2
    prompts = [m[-1]["content"] for node, m in llm.requests if node == "write_code"]
    assert "identical masks" in prompts[1] and "ranks weights exactly like g001-a2" in prompts[4]
    assert "g002-a0" not in state["candidates"] and state["candidates"]["g002-a1"]["status"] == "ok"
    assert state["budget_used"] == 4

    # Near twins: the same masks with one kept and one pruned weight swapped are caught as well.
    from autoprune.agent.mask_files import load_masks
    from autoprune.agent.nodes.verify import masks_digest, packed_masks, twin_of

    masks = load_masks(tmp_path / state["candidates"][WANDA_ID]["masks_path"])
    name = next(iter(masks))
    row = masks[name][0]
    kept, pruned = int(row.nonzero()[0]), int((~row).nonzero()[0])
    row[kept], row[pruned] = False, True
    packed = packed_masks(masks)
    reason = twin_of(state, tmp_path, packed, masks_digest(packed))
    assert reason.startswith("it removes almost the same weights as seed-wanda")


def test_a_repeated_expression_is_mutated_by_trusted_code_and_evaluated(tmp_path):
    """The LLM writes the same expression twice: the repeat becomes an untested single-point
    mutation (origin "mutation", parent = the repeated candidate) that goes through the sandbox
    and the budget like any candidate, instead of costing another LLM call."""
    replies = {**default_replies(), "write_code": [GOOD_EXPRESSION]}      # every reply the same
    llm = ScriptedLLM(replies)
    services = tiny_services(tiny_llama_model(), tmp_path, llm, budget=3, **LEAN_FINALE)
    state = build_graph(services).invoke(start(services), {"recursion_limit": 500})
    searched = [r for r in state["candidates"].values() if r["generation"] > 0]
    first = next(r for r in searched if r["origin"] == "llm")
    mutants = [r for r in searched if r["origin"] == "mutation"]
    assert len(mutants) == 2 and state["budget_used"] == 3
    assert {m["parent"] for m in mutants} <= {first["id"]} | {m["id"] for m in mutants}
    sources = [(tmp_path / r["path"]).read_text() for r in searched]
    assert len({metric_fingerprint(src) for src in sources}) == 3                 # three different metrics
    assert all(m["status"] in ("ok", "duplicate", "crashed") and m["status"] != "written" for m in mutants)
    writes = sum(node == "write_code" for node, _ in llm.requests)
    assert writes == 3                                                           # no extra LLM calls
    notes = [e["text"] for e in read_trace(tmp_path).events if e["type"] == "note"]
    assert sum("trusted mutation" in text for text in notes) == 2
