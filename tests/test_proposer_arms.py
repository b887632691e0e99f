"""The ablation arms without an LLM (`--proposer mutation|random`): the real graph, sandbox and fitness on a
tiny Llama; the LLM is the real client against the scripted server with NO replies, so any call would fail."""

from __future__ import annotations

import pytest

from autoprune.agent.archive import write_seeds
from autoprune.agent.config import make_config
from autoprune.agent.graph import build_graph
from autoprune.agent.state import initial_state
from autoprune.errors import BadInputError

from agent_support import LEAN_FINALE, ScriptedLLM, tiny_services
from conftest import tiny_llama_model


@pytest.mark.parametrize("proposer", ["mutation", "random"])
def test_trusted_arms_spend_the_budget_without_one_llm_call(tmp_path, proposer):
    llm = ScriptedLLM({})                 # no node has a reply: a request would raise in the server
    services = tiny_services(tiny_llama_model(), tmp_path, llm, budget=2, proposer=proposer, **LEAN_FINALE)
    seed_ids, records = write_seeds(services.run_dir)
    state = build_graph(services).invoke(initial_state("t", seed_ids, records), {"recursion_limit": 500})
    assert llm.requests == [] and state["llm_calls"] == 0
    assert state["budget_used"] == 2 and state["stop_reason"].startswith("candidate budget spent")
    searched = [rec for rec in state["candidates"].values() if rec["generation"] > 0]
    assert len(searched) == 2 and {rec["origin"] for rec in searched} == {proposer}
    if proposer == "mutation":
        assert all(rec["parent"] in state["candidates"] for rec in searched)     # a population parent
    assert len({rec["fingerprint"] for rec in state["candidates"].values()}) == len(state["candidates"])
    assert state["insights"]["hypotheses"] and state["insights"]["lessons"] == {}


def test_trusted_arms_refuse_whole_programs():
    with pytest.raises(BadInputError, match="--proposer random writes one-line expressions"):
        make_config(proposer="random", code_mode="program")
    with pytest.raises(BadInputError, match="proposer"):
        make_config(proposer="oracle")
