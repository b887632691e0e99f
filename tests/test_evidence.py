"""Measured evidence: ingredients read from the parsed metric, paired effects with intervals, comparable numbers."""

from __future__ import annotations

import numpy as np

from autoprune.agent.archive import SEED_SOURCES, WANDA_ID
from autoprune.agent.evidence import (Ingredient, comparable_ranking, effect_of, ingredients, measured_findings,
                                      one_change, paired_differences)
from autoprune.agent.expression import wrap_expression
from autoprune.agent.insights import InsightGraph


def parts(expression: str) -> set[tuple[str, str]]:
    return {(i.kind, i.value) for i in ingredients(wrap_expression(expression))}


def test_ingredients_come_from_the_parsed_expression():
    assert parts("W.abs() * X.norm") == {("stat", "norm"), ("weight", "|W|^1")}
    assert parts("torch.abs(W) * torch.log1p(X.var)") == {("stat", "var"), ("transform", "log"), ("weight", "|W|^1")}
    assert parts("W.pow(2) * X.sq_mean.sqrt()") == {("stat", "sq_mean"), ("transform", "sqrt"), ("weight", "|W|^2")}
    assert ("depth", "layer") in parts("W.abs() * (X.norm + X.layer_index / X.num_layers * X.max_abs)")
    assert ("normalise", "layer") in parts("W.abs() * (X.norm / X.norm.mean() + X.var.sqrt() / X.var.sqrt().mean())")
    # a whole program: read from its AST, and marked so that it pairs only with programs
    ria = {(i.kind, i.value) for i in ingredients(SEED_SOURCES["seed-ria"])}
    assert ("form", "program") in ria and ("stat", "norm") in ria
    assert ("group", "layer") in {(i.kind, i.value) for i in ingredients(SEED_SOURCES["seed-magnitude"])}
    assert ingredients(wrap_expression("__import__('os')")) is None      # not a valid metric: no ingredients


def test_one_change_is_a_presence_or_a_swap_of_one_kind():
    wanda = ingredients(wrap_expression("W.abs() * X.norm"))
    with_sqrt = ingredients(wrap_expression("W.abs() * X.norm.sqrt()"))
    change, sign = one_change(wanda, with_sqrt)
    assert change.label() == "adding sqrt transform" and sign == 1
    assert one_change(with_sqrt, wanda)[1] == -1                          # same change, other orientation
    swap, _ = one_change(wanda, ingredients(wrap_expression("W.abs() * X.max_abs")))
    assert swap.label() == "X.max_abs -> X.norm"
    assert one_change(wanda, ingredients(wrap_expression("W.pow(2) * X.max_abs"))) is None   # two changes
    assert one_change(wanda, wanda) is None
    stat_for_weight = frozenset({Ingredient("stat", "norm")}), frozenset({Ingredient("weight", "|W|^2")})
    assert one_change(*stat_for_weight) is None                         # a swap must stay within one kind


def test_effect_direction_comes_from_the_interval():
    rng = np.random.default_rng(0)
    helps = effect_of([-0.05 + 0.01 * rng.standard_normal(16) for _ in range(3)])
    assert helps.relation == "supports" and helps.high < 0 and helps.pairs == 3 and helps.windows == 48
    assert helps.ppl_change_pct < 0
    hurts = effect_of([np.full(8, 0.2)])
    assert hurts.relation == "refutes" and hurts.low > 0
    noise = effect_of([rng.standard_normal(8)])
    assert noise.relation == "inconclusive" and noise.low < 0 < noise.high
    assert effect_of([np.array([0.1, -0.3, 0.2])]) == effect_of([np.array([0.1, -0.3, 0.2])])   # seeded
    assert list(paired_differences([1.0, 2.0, 3.0], [1.5, 2.5])) == [-0.5, -0.5]              # common windows


def record(cid: str, nll: dict, status: str = "ok") -> dict:
    return {"id": cid, "status": status, "nll": nll}


def test_findings_pair_candidates_that_differ_in_one_ingredient():
    base = [3.0, 3.2, 2.9, 3.1, 3.0, 3.3, 2.8, 3.1]
    sources = {WANDA_ID: SEED_SOURCES[WANDA_ID], "sqrt": wrap_expression("W.abs() * X.norm.sqrt()"),
               "maxabs": wrap_expression("W.abs() * X.max_abs"),
               "far": wrap_expression("W.pow(2) * torch.log1p(X.var)"),
               "broken": wrap_expression("W.abs() * X.var")}
    candidates = {WANDA_ID: record(WANDA_ID, {"0": base[:2], "1": base}),
                  "sqrt": record("sqrt", {"0": [v - 0.1 for v in base[:2]], "1": [v - 0.1 - 0.01 * (i % 3)
                                                                                  for i, v in enumerate(base)]}),
                  "maxabs": record("maxabs", {"0": [v + 0.3 for v in base[:2]]}),
                  "far": record("far", {"0": [1.0, 1.0]}),
                  "broken": record("broken", {}, status="crashed")}
    findings = {f.name: f for f in measured_findings(candidates, sources)}
    assert set(findings) == {"adding sqrt transform", "X.max_abs -> X.norm"}
    sqrt = findings["adding sqrt transform"]
    assert sqrt.effect.relation == "supports" and sqrt.effect.windows == 8 and sqrt.examples == (("sqrt", WANDA_ID),)
    swap = findings["X.max_abs -> X.norm"]              # max_abs only has 2 windows: paired on those
    assert swap.effect.windows == 2 and swap.effect.mean < 0   # "with X.norm" minus "with X.max_abs"
    graph = InsightGraph()
    graph.set_findings([f.to_dict() for f in findings.values()])
    text = InsightGraph.from_dict(graph.to_dict()).render()
    assert "adding sqrt transform helps" in text and "95% CI" in text


def test_standings_rank_only_numbers_on_the_same_windows():
    # the case: 58.03 on 32 windows must not be listed above 49.19 on 8
    long_run = [float(np.log(58.03))] * 32
    short_run = [float(np.log(49.19))] * 8
    candidates = {"wanda": record("wanda", {"0": long_run[:2], "1": long_run[:8], "2": long_run}),
                  "new": record("new", {"0": short_run[:2], "1": short_run})}
    n, ranked = comparable_ranking(candidates, ["wanda", "new"])
    assert n == 8 and [cid for cid, _ in ranked] == ["new", "wanda"]
    assert round(ranked[0][1], 2) == 49.19 and round(ranked[1][1], 2) == 58.03
    # with enough entries on more windows, those measured on fewer are left out rather than mixed in
    more = {**candidates, "b": record("b", {"2": [4.1] * 32}), "c": record("c", {"2": [4.2] * 32})}
    n, ranked = comparable_ranking(more, ["wanda", "new", "b", "c"])
    assert n == 32 and "new" not in dict(ranked)
