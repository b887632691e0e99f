"""Layer-wise allocators: exact parameter-weighted mean, bounds, monotonic in outliers / skew."""

from __future__ import annotations

import pytest
import torch

from autoprune.errors import BadInputError
from autoprune.pruning.allocators import allocate_sparsity
from autoprune.pruning.allocators.exact_mean import weighted_mean
from autoprune.pruning.profile import block_profile, outlier_ratio, skewness

PARAMS = [100, 300, 200, 250, 150, 400]
OUTLIERS = [0.010, 0.004, 0.020, 0.008, 0.015, 0.001]
SKEWS = [3.0, 1.0, 8.0, 2.5, 5.0, 0.5]


def profiles():
    return [{"outlier_ratio": o, "skewness": s, "weight_skewness": s / 2} for o, s in zip(OUTLIERS, SKEWS)]


@pytest.mark.parametrize("name", ["uniform", "owl", "sdsa"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_weighted_mean_is_exact_and_bounds_hold(name, target):
    lam = 0.08
    ratios = allocate_sparsity(name, target, profiles(), PARAMS, lam=lam)
    assert len(ratios) == len(PARAMS)
    assert weighted_mean(ratios, PARAMS) == pytest.approx(target, abs=1e-9)
    assert all(target - lam - 1e-12 <= r <= target + lam + 1e-12 for r in ratios)


def test_owl_gives_more_outliers_less_sparsity():
    ratios = allocate_sparsity("owl", 0.5, profiles(), PARAMS)
    order = sorted(range(len(OUTLIERS)), key=lambda i: OUTLIERS[i])
    assert all(ratios[a] >= ratios[b] for a, b in zip(order, order[1:]))
    assert ratios[OUTLIERS.index(max(OUTLIERS))] < 0.5 < ratios[OUTLIERS.index(min(OUTLIERS))]


@pytest.mark.parametrize("mapping", ["softmax", "linear"])
@pytest.mark.parametrize("source", ["score", "weight"])
def test_sdsa_gives_heavier_tails_less_sparsity(mapping, source):
    ratios = allocate_sparsity("sdsa", 0.6, profiles(), PARAMS, mapping=mapping, source=source, temperature=0.5)
    order = sorted(range(len(SKEWS)), key=lambda i: SKEWS[i])
    assert all(ratios[a] >= ratios[b] - 1e-12 for a, b in zip(order, order[1:]))
    assert ratios[SKEWS.index(max(SKEWS))] < ratios[SKEWS.index(min(SKEWS))]


def test_bounds_stay_exact_when_clipping_is_needed():
    # One huge block pinned at a bound forces the others to absorb the difference.
    params = [10_000, 10, 10, 10]
    prof = [{"outlier_ratio": o, "skewness": s, "weight_skewness": s}
            for o, s in [(0.0, 0.0), (1.0, 9.0), (0.5, 5.0), (0.2, 1.0)]]
    for name in ("owl", "sdsa"):
        ratios = allocate_sparsity(name, 0.5, prof, params, lam=0.1)
        assert weighted_mean(ratios, params) == pytest.approx(0.5, abs=1e-9)
        assert all(0.4 - 1e-12 <= r <= 0.6 + 1e-12 for r in ratios)


def test_equal_profiles_give_uniform():
    flat = [{"outlier_ratio": 0.01, "skewness": 2.0, "weight_skewness": 1.5}] * 4
    for name in ("owl", "sdsa"):
        assert allocate_sparsity(name, 0.5, flat, [1, 2, 3, 4]) == pytest.approx([0.5] * 4)


def test_unknown_allocator_and_bad_target_are_bad_inputs():
    with pytest.raises(BadInputError, match="unknown allocation"):
        allocate_sparsity("best", 0.5, profiles(), PARAMS)
    with pytest.raises(BadInputError, match=r"\(0, 1\)"):
        allocate_sparsity("uniform", 1.2, profiles(), PARAMS)


def test_profile_statistics():
    x = torch.tensor([1.0] * 99 + [100.0])
    assert outlier_ratio(x, 5.0) == pytest.approx(0.01)
    assert skewness(x) > 9.0
    assert skewness(torch.ones(10)) == 0.0
    symmetric = torch.linspace(-1, 1, 101)
    assert abs(skewness(symmetric)) < 1e-6
    prof = block_profile([x.reshape(10, 10)], [torch.randn(10, 10)])
    assert set(prof) >= {"outlier_ratio", "skewness", "weight_skewness"}
