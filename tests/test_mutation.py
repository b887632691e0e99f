"""Trusted mutation of repeated expressions: every mutant is a valid, different expression."""

from __future__ import annotations

import random

import pytest

from autoprune.agent.archive import SEED_SOURCES, metric_fingerprint
from autoprune.agent.expression import CandidateFormatError, validate_expression, wrap_expression
from autoprune.agent.mutation import mutations, untested_mutation
from autoprune.agent.rank_equivalence import rank_signature


def test_mutations_are_valid_distinct_single_point_changes():
    found = mutations("W.abs() * X.norm")
    assert "W.abs() * X.max_abs" in found                       # swap a statistic
    assert "W.abs() * (X.norm / X.norm.mean() + X.var.sqrt() / X.var.sqrt().mean())" in found  # blend
    assert "W.abs() * X.norm.pow(0.5)" in found                 # re-weight the statistic
    assert "W.abs().pow(1.5) * X.norm" in found                 # re-weight the weight term
    assert len(found) == len(set(found)) and "W.abs() * X.norm" not in found
    assert not any("X.mean" in m for m in found)                # can be negative: never swapped in
    for mutant in found:
        validate_expression(mutant)
    assert "W.abs().pow(1.5) * torch.sqrt(X.sq_mean)" in mutations("torch.abs(W) * torch.sqrt(X.sq_mean)")


def test_untested_mutation_skips_what_was_tested_and_can_give_up():
    options = mutations("W.abs() * X.norm")
    tested = set(options[:-1])
    assert untested_mutation("W.abs() * X.norm", lambda m: m not in tested, random.Random(0)) == options[-1]
    assert untested_mutation("W.abs() * X.norm", lambda m: False, random.Random(0)) is None
    # Magnitude alone: every power of |W| ranks alike, so there is nothing new to mutate into.
    assert untested_mutation("W.abs() * 2", lambda m: True, random.Random(0)) is None


def test_hostile_text_is_not_mutated_into_something_runnable():
    with pytest.raises(CandidateFormatError):
        mutations("__import__('os').system('x')")


def test_mutants_rank_differently_from_their_parent_and_from_each_other():
    """`W.abs() * X.sq_mean` and `W.abs() * X.norm.pow(2.0)` rank alike (‖X‖² = N·sq_mean): one is kept."""
    found = mutations("W.abs() * X.norm")
    assert "W.abs() * X.sq_mean" in found and "W.abs() * X.norm.pow(2.0)" not in found
    assert len({rank_signature(m) for m in found} | {rank_signature("W.abs() * X.norm")}) == len(found) + 1


def test_a_mutant_that_ranks_like_a_tested_metric_is_not_chosen():
    """`W.pow(2) * X.var` -> `W.pow(2) * X.sq_mean` is Wanda in disguise: with Wanda tested, never picked."""
    tested = {metric_fingerprint(SEED_SOURCES["seed-wanda"])}
    is_new = lambda m: metric_fingerprint(wrap_expression(m)) not in tested      # noqa: E731 (write_code's test)
    assert "W.pow(2) * X.sq_mean" in mutations("W.pow(2) * X.var")
    picks = {untested_mutation("W.pow(2) * X.var", is_new, random.Random(seed)) for seed in range(40)}
    assert "W.pow(2) * X.sq_mean" not in picks and len(picks) > 3


def test_blends_respect_units_and_squared_weights_are_re_weighted():
    found = mutations("W.pow(2) * X.sq_mean")
    assert "W.pow(2) * (X.sq_mean + X.var)" in found                               # both x²: summed as is
    assert "W.pow(2) * (X.sq_mean / X.sq_mean.mean() + X.norm / X.norm.mean())" in found   # x² vs x·√N
    assert "W.abs().pow(1.5) * X.sq_mean" in found                                 # W.pow(2) re-weighted


def test_when_every_single_point_mutant_was_tested_two_point_ones_are_tried():
    single = set(mutations("W.pow(2) * X.sq_mean"))
    picked = untested_mutation("W.pow(2) * X.sq_mean", lambda m: m not in single, random.Random(0))
    assert picked is not None and picked not in single
    assert any(picked in mutations(parent) for parent in single)                   # one more point away
    assert untested_mutation("W.pow(2) * X.sq_mean", lambda m: m not in single, random.Random(0), depth=1) is None


def test_untested_mutation_takes_a_preferred_mutant_first():
    wanted = lambda m: "X.var" in m       # noqa: E731 - e.g. agent/population.py: "opens an empty cell"
    for seed in range(5):
        assert "X.var" in untested_mutation("W.abs() * X.norm", lambda m: True, random.Random(seed), prefer=wanted)
    assert untested_mutation("W.abs() * X.norm", lambda m: True, random.Random(0), prefer=lambda m: False)
