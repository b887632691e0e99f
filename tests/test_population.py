"""The exploring population: MAP-Elites cells, parent choice, novelty, and the trusted proposers."""

from __future__ import annotations

import random

import pytest

from autoprune.agent.archive import WANDA_ID, metric_fingerprint, write_seeds
from autoprune.agent.evidence import ingredients
from autoprune.agent.expression import validate_expression, wrap_expression
from autoprune.agent.llm import LLMRequestRefused
from autoprune.agent.population import cell_of, population_of
from autoprune.agent.proposer import NoLLMClient, propose
from autoprune.agent.random_search import random_untested
from autoprune.agent.rank_equivalence import rank_signature


def cell(expression: str):
    return cell_of(ingredients(wrap_expression(expression)))


def test_cells_are_statistics_transform_family_and_depth():
    assert cell("W.abs() * X.norm") == (("norm",), "plain", False)
    assert cell("W.abs() * X.norm.sqrt() * X.var") == (("norm", "var"), "sqrt", False)
    assert cell("W.abs() * (X.norm + X.layer_index / X.num_layers * X.max_abs)") == (("max_abs", "norm"), "plain", True)
    assert cell("W.pow(2) * X.norm") == cell("W.abs() * X.norm")          # the weight power is not a feature


def run_folder(tmp_path, expressions: dict[str, str]) -> dict:
    """A run folder with the seeds and one-line candidates, all verified, ranked in the given order."""
    seed_ids, records = write_seeds(tmp_path)
    candidates = {cid: {**rec, "status": "ok", "nll": {"0": [3.0, 3.0]}} for cid, rec in records.items()}
    for cid, expression in expressions.items():
        path = tmp_path / "candidates" / f"{cid}.py"
        path.write_text(wrap_expression(expression))
        candidates[cid] = {"id": cid, "path": f"candidates/{cid}.py", "status": "ok", "nll": {"0": [3.0, 3.0]}}
    return {"candidates": candidates, "leaderboard": list(expressions) + seed_ids}


def test_each_cell_keeps_its_best_and_parents_cover_every_cell(tmp_path):
    state = run_folder(tmp_path, {"a": "torch.sqrt(X.norm) * W.abs()", "b": "W.abs() * X.norm.sqrt()",
                                  "c": "W.abs() * X.max_abs"})
    population = population_of(state, tmp_path)
    assert population.elites[cell("W.abs() * X.norm.sqrt()")].cid == "a"   # a ranks above b in that cell
    assert population.elites[cell("W.abs() * X.norm")].cid == WANDA_ID
    parents = population.parents(random.Random(0))
    assert {p.cid for p in parents} == {m.cid for m in population.elites.values()}
    assert len(parents) == len(population.elites)
    assert sorted(p.cid for p in population.parents(random.Random(1))) == sorted(p.cid for p in parents)
    # one example per cell for the prompt: b shares a's cell and is left out
    assert population.diverse_elite(state["leaderboard"], 3) == ["a", "c", WANDA_ID]
    assert population.opens_cell("W.abs() * X.var") and not population.opens_cell("W.pow(2) * X.max_abs")


def test_mutation_proposer_mutates_a_population_parent_into_something_untested(tmp_path):
    state = run_folder(tmp_path, {"c": "W.abs() * X.max_abs"})
    tested = {metric_fingerprint(wrap_expression(e)) for e in ("W.abs() * X.max_abs", "W.abs() * X.norm")}
    is_new = lambda e: metric_fingerprint(wrap_expression(e)) not in tested    # noqa: E731
    expression, origin, parent = propose("mutation", state, tmp_path, rng=random.Random(0), is_new=is_new, offered={})
    assert origin == "mutation" and parent in state["candidates"] and is_new(expression)
    validate_expression(expression)
    assert propose("mutation", state, tmp_path, rng=random.Random(0), is_new=lambda e: False, offered={}) is None
    # every parent's neighbourhood tested: a random restart, so a run without LLM cap never runs dry
    only_random = lambda e: is_new(e) and "log1p" in e          # noqa: E731 - no mutation writes log1p
    restart = propose("mutation", state, tmp_path, rng=random.Random(0), is_new=only_random, offered={})
    assert restart is not None and restart[1:] == ("random", None)


def test_random_search_draws_valid_new_expressions_from_the_grammar(tmp_path):
    seen: set = set()
    rng = random.Random(3)
    for _ in range(30):
        expression = random_untested(rng, lambda e: rank_signature(e) not in seen)
        validate_expression(expression)              # the grammar check LLM replies get
        seen.add(rank_signature(expression))
    assert len(seen) == 30
    state = run_folder(tmp_path, {})
    expression, origin, parent = propose("random", state, tmp_path, rng=random.Random(0), is_new=lambda e: True,
                                         offered={})
    assert origin == "random" and parent is None and "X.hinv_diag" not in expression   # only what the run offers


def test_the_no_llm_client_refuses_every_call():
    with pytest.raises(LLMRequestRefused, match="--proposer mutation makes no LLM call"):
        NoLLMClient("mutation").chat([{"role": "user", "content": "hi"}], node="write_code")
