"""Trusted checks of LLM-proposed layer-wise rate vectors (Self-Pruner mode)."""

from __future__ import annotations

import pytest

from autoprune.errors import BadInputError
from autoprune.pruning.rates import RateConstraint, check_rates, parse_rate_vector, uniform_rates

C = RateConstraint(target=0.3, low=0.0, high=0.6, layers=4)


def test_parse_finds_the_list_in_prose():
    assert parse_rate_vector("Child: [0.2, 0.3, 0.4, 0.3] because ...") == [0.2, 0.3, 0.4, 0.3]
    for garbage in ("no numbers here", "[0.1, 'a']", "[]", "[0.1, 0.2,"):
        with pytest.raises(BadInputError):
            parse_rate_vector(garbage)


def test_valid_vector_passes_unchanged():
    checked = check_rates([0.2, 0.3, 0.4, 0.3], C)
    assert checked.rates == [0.2, 0.3, 0.4, 0.3] and not checked.repaired


def test_small_violations_are_projected_exactly():
    checked = check_rates([0.25, 0.35, 0.7, 0.0], C)   # one over the bound, mean 0.325
    assert checked.repaired
    assert abs(sum(checked.rates) / 4 - 0.3) < 1e-6
    assert all(0.0 <= r <= 0.6 for r in checked.rates)


def test_large_violations_and_wrong_length_are_rejected_with_a_reason():
    with pytest.raises(BadInputError, match="too far from the target"):
        check_rates([0.9, 0.9, 0.9, 0.9], C)
    with pytest.raises(BadInputError, match="got 3 rates"):
        check_rates([0.3, 0.3, 0.3], C)
    with pytest.raises(BadInputError, match="finite"):
        check_rates([0.3, float("nan"), 0.3, 0.3], C)


def test_uniform_meets_the_constraint():
    assert check_rates(uniform_rates(C), C).rates == [0.3] * 4
