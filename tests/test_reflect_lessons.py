"""reflect through the real scripted LLM server: echoed or looping lessons are never recorded; the
edges come from measured evidence; prompts rank only numbers measured on the same windows."""

from __future__ import annotations

import math

import pytest

from autoprune.agent.archive import WANDA_ID, write_seeds
from autoprune.agent.expression import wrap_expression
from autoprune.agent.nodes.common import prompt_context
from autoprune.agent.nodes.reflect import reflect
from autoprune.runlog.trace_file import read_trace

from agent_support import ScriptedLLM, tiny_services

ECHO_AND_LOOPS = ("LESSON: 1. seed-wanda [wanda] perplexity 58.03\n"
                  "LESSON: removing duplicates is not possible; remove duplicates is not possible; "
                  "removing duplicates is not possible\n"
                  "LESSON: cubing the weights lets a few large weights dominate; keep the weight power at 1 or 2.")
GOOD = "LESSON: the max_abs statistic protects outlier channels that the norm averages away"
NEAR_REPEAT = "LESSON: max_abs statistics protect the outlier channels the norm averages away"


def nlls(ppl: float, n: int) -> list[float]:
    return [math.log(ppl) + 0.01 * (i % 3) for i in range(n)]


@pytest.fixture()
def reflecting(tmp_path, tiny_llama):
    llm = ScriptedLLM({"reflect": [ECHO_AND_LOOPS, GOOD, NEAR_REPEAT]})
    services = tiny_services(tiny_llama, tmp_path, llm, budget=5)
    seed_ids, records = write_seeds(tmp_path)
    candidates = {cid: {**rec, "status": "ok"} for cid, rec in records.items()}
    # Wanda climbed to 4 windows (58.03 there); the new candidate has only the 2 of level 0 (49.19)
    candidates[WANDA_ID]["nll"] = {"0": nlls(58.03, 2), "1": nlls(58.03, 4)}
    candidates["seed-ria"]["nll"] = {"0": nlls(70.0, 2)}
    candidates["seed-magnitude"]["nll"] = {"0": nlls(900.0, 2)}
    (tmp_path / "candidates" / "g001-a0.py").write_text(wrap_expression("W.abs() * X.max_abs"))
    candidates["g001-a0"] = {"id": "g001-a0", "generation": 1, "origin": "llm", "hypothesis": "outlier-inputs",
                             "path": "candidates/g001-a0.py", "status": "ok", "nll": {"0": nlls(49.19, 2)},
                             "fitness": 49.19, "level": 0}
    state = {"generation": 1, "candidates": candidates, "hypothesis": {"name": "outlier-inputs", "statement": "s"},
             "leaderboard": [WANDA_ID, "g001-a0", "seed-ria", "seed-magnitude"], "archive": [WANDA_ID, "g001-a0"],
             "insights": {}, "llm_calls": 0, "tokens": {"prompt": 0, "completion": 0}}
    return state, services, llm


def test_echoed_and_looping_lessons_are_never_recorded(reflecting):
    state, services, llm = reflecting
    update = reflect(state, services)
    assert [node for node, _ in llm.requests] == ["reflect"]            # the real client asked the server
    assert update["insights"]["lessons"] == {} and update["candidates"]["g001-a0"]["reflection"] == ""
    notes = [e["text"] for e in read_trace(services.run_dir).events if e["type"] == "note"]
    assert sum("lesson not recorded" in n for n in notes) == 3
    # the edge is trusted: the paired effect against Wanda on the 2 common windows, with its interval
    evidence = update["insights"]["evidence"][0]
    assert evidence["relation"] == "supports"
    assert "NLL vs Wanda" in evidence["detail"] and "95% CI" in evidence["detail"]
    # a finding from the pair that differs in one ingredient (X.norm vs X.max_abs)
    assert [f["name"] for f in update["insights"]["findings"]] == ["X.max_abs -> X.norm"]
    assert update["insights"]["findings"][0]["relation"] == "refutes"      # with X.norm the NLL is higher

    state = next_generation({**state, **update}, services.run_dir, "W.abs() * X.var", 61.0)
    update = reflect(state, services)                                      # a real lesson is kept
    assert update["insights"]["lessons"] == {"outlier-inputs-2": [GOOD.removeprefix("LESSON: ")]}
    state = next_generation({**state, **update}, services.run_dir, "W.abs() * X.sq_mean", 62.0)
    update = reflect(state, services)                                      # its near-repeat is not
    assert update["insights"]["lessons"] == {"outlier-inputs-2": [GOOD.removeprefix("LESSON: ")]}
    assert [node for node, _ in llm.requests] == ["reflect"] * 3


def next_generation(state: dict, run_dir, expression: str, ppl: float) -> dict:
    """The state after one more generation wrote and measured `expression`."""
    generation = state["generation"] + 1
    cid = f"g{generation:03d}-a0"
    (run_dir / "candidates" / f"{cid}.py").write_text(wrap_expression(expression))
    record = {"id": cid, "generation": generation, "origin": "llm", "hypothesis": f"outlier-inputs-{generation}",
              "path": f"candidates/{cid}.py", "status": "ok", "nll": {"0": nlls(ppl, 2)}, "fitness": ppl, "level": 0}
    return {**state, "generation": generation, "candidates": {**state["candidates"], cid: record},
            "hypothesis": {"name": f"outlier-inputs-{generation}", "statement": "s"}}


def test_prompts_rank_only_perplexities_on_the_same_windows(reflecting):
    state, services, llm = reflecting
    reflect(state, services)
    reflect_prompt = llm.requests[0][1][-1]["content"]
    assert "on the same 2 windows" in reflect_prompt
    assert reflect_prompt.index("g001-a0: 49.") < reflect_prompt.index("seed-wanda: 58.")
    analyse = services.prompts.render("analyse", **prompt_context(services, state))[-1]["content"]
    best = analyse[analyse.index("Best metrics so far"):]
    assert "validation perplexity on the same 2 windows" in best
    assert best.index("perplexity 49.") < best.index("perplexity 58.") < best.index("perplexity 70.")

