"""Trusted mutation of repeated expressions: every mutant is a valid, different expression."""

from __future__ import annotations

import random

import pytest

from autoprune.agent.expression import CandidateFormatError, validate_expression
from autoprune.agent.mutation import mutations, untested_mutation


def test_mutations_are_valid_distinct_single_point_changes():
    found = mutations("W.abs() * X.norm")
    assert "W.abs() * X.max_abs" in found                       # swap a statistic
    assert "W.abs() * (X.norm + X.var.sqrt())" in found         # blend in a second one
    assert "W.abs() * X.norm.pow(0.5)" in found                 # re-weight the statistic
    assert "W.abs().pow(1.5) * X.norm" in found                 # re-weight the weight term
    assert len(found) == len(set(found)) and "W.abs() * X.norm" not in found
    assert not any("X.mean" in m for m in found)                # can be negative: never swapped in
    for mutant in found:
        validate_expression(mutant)
    assert "torch.abs(W).pow(2.0) * torch.sqrt(X.sq_mean)" in mutations("torch.abs(W) * torch.sqrt(X.sq_mean)")


def test_untested_mutation_skips_what_was_tested_and_can_give_up():
    options = mutations("W.abs() * X.norm")
    tested = set(options[:-1])
    assert untested_mutation("W.abs() * X.norm", lambda m: m not in tested, random.Random(0)) == options[-1]
    assert untested_mutation("W.abs() * X.norm", lambda m: False, random.Random(0)) is None
    assert untested_mutation("W.abs() * 2", lambda m: True, random.Random(0)) is not None   # W term only


def test_hostile_text_is_not_mutated_into_something_runnable():
    with pytest.raises(CandidateFormatError):
        mutations("__import__('os').system('x')")
