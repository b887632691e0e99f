"""A run collects the Hessian statistics and uses them: SparseGPT's OBS saliency is a seed, the
prompts state X.hinv_diag, replies may name it (and only where the run collected it).

The run's real preparation (agent/setup.py: a saved tiny Llama, its own text as data, the real
calibration and scoring bundle) and the real ProgramSearch services; only the LLM is scripted.
"""

from __future__ import annotations

import dataclasses

import pytest

from autoprune.agent.archive import SEED_SOURCES, SPARSEGPT_ID, metric_fingerprint, read_source
from autoprune.agent.config import RunConfig
from autoprune.agent.llm_journal import JournaledLLM
from autoprune.agent.nodes.write_code import write_code
from autoprune.agent.run import ProgramSearch
from autoprune.agent.runtime.endpoint import Endpoint
from autoprune.agent.runtime.mode import Run
from autoprune.agent.services import RunTrace

from agent_support import ScriptedLLM

# Ranks unlike the seed (a new metric); every salvageable prefix of it names X.hinv_diag too.
OBS_REPLY = "```python\nX.hinv_diag.rsqrt() * W.abs() * X.norm\n```"
PROGRAM_REPLY = "```python\ndef score(W, X):\n    return W.abs() * X.norm / X.hinv_diag\n```"


@pytest.fixture(scope="module")
def program_run(tmp_path_factory, tiny_llama_dir, wikitext_dir):
    """A program-mode run, prepared and connected as `autoprune-agent run` does, at generation 0."""
    run_dir = tmp_path_factory.mktemp("hessian-run")
    config = RunConfig(model=str(tiny_llama_dir), data=str(wikitext_dir), seqlen=32, calibration_samples=2,
                       fitness_levels=[2], sandbox="process", code_mode="program")
    config.save(run_dir)
    llm = ScriptedLLM({"write_code": [PROGRAM_REPLY]})
    trace = RunTrace(run_dir)
    run = Run(run_dir=run_dir, run_id="h", resumed=False, trace=trace,
              endpoint=Endpoint(llm.server.base_url, "scripted", embedded=False),
              llm=JournaledLLM(llm, run_dir, trace))
    mode = ProgramSearch(config)
    mode.prepare(run)
    services = mode.connect(run)
    state = mode.graph_input(services, None, run)
    yield services, state, llm
    run.resources.close()


def test_a_program_run_seeds_sparsegpt_and_its_prompt_states_hinv_diag(program_run):
    services, state, llm = program_run
    assert services.context.code_style == "program" and services.context.has_hessian
    assert SPARSEGPT_ID in state["queue"] and state["candidates"][SPARSEGPT_ID]["origin"] == "seed"
    assert read_source(services.run_dir, state["candidates"][SPARSEGPT_ID]) == SEED_SOURCES[SPARSEGPT_ID]
    assert "W**2 / X.hinv_diag" in SEED_SOURCES[SPARSEGPT_ID]
    state = {**state, "generation": 1, "hypothesis": {"name": "obs", "statement": "s", "generation": 1},
             "repairs": 0}
    update = write_code(state, services)
    prompt = "\n".join(m["content"] for m in llm.requests[-1][1])
    assert "X.hinv_diag" in prompt and "X.gram" not in prompt       # collected; XᵀX itself is not carried
    assert update["current"] in update["candidates"]                 # the reply's program was accepted


def test_an_expression_naming_hinv_diag_is_refused_only_where_the_run_lacks_it(program_run):
    services, state, _ = program_run
    state = {**state, "generation": 2, "hypothesis": {"name": "obs", "statement": "s", "generation": 2},
             "repairs": 0}
    for has_hessian in (True, False):
        context = dataclasses.replace(services.context, code_style="expression", has_hessian=has_hessian)
        expression = dataclasses.replace(services, context=context,
                                         llm=JournaledLLM(ScriptedLLM({"write_code": [OBS_REPLY]}),
                                                          services.run_dir / f"llm-{has_hessian}"))
        (services.run_dir / f"llm-{has_hessian}").mkdir()
        update = write_code(state, expression)
        if has_hessian:
            cid = update["current"]
            assert update["candidates"][cid]["fingerprint"] == metric_fingerprint(
                read_source(services.run_dir, update["candidates"][cid]))
        else:
            assert "candidates" not in update and "did not collect `X.hinv_diag`" in update["last_error"]


def test_a_run_without_the_hessian_gets_no_sparsegpt_seed(tmp_path):
    from autoprune.agent.archive import write_seeds

    ids, _ = write_seeds(tmp_path)
    assert SPARSEGPT_ID not in ids and ids == ["seed-wanda", "seed-ria", "seed-magnitude"]
