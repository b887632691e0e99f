"""ATP (arithmetic-progression allocation), SDSA's log-compressed skew, and the validation tuner."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.data import WindowSet
from autoprune.errors import BadInputError
from autoprune.evaluators.perplexity import perplexity
from autoprune.pruning.allocators import allocate_sparsity, needs_profiles
from autoprune.pruning.allocators.exact_mean import weighted_mean
from autoprune.pruning.allocators.tuning import DEFAULT_GRIDS, tune, validation_proxy
from autoprune.pruning.apply import snapshot_weights
from autoprune.pruning.calibration import target_linears
from autoprune.pruning.loop import prune_model
from autoprune.pruning.metrics import get_metric

PARAM_LISTS = st.lists(st.integers(min_value=1, max_value=10**6), min_size=2, max_size=40)


@settings(max_examples=200, deadline=None)
@given(target=st.floats(0.05, 0.95), beta=st.floats(1e-4, 0.05), params=PARAM_LISTS)
def test_atp_has_the_exact_mean_stays_in_bounds_and_grows_with_depth(target, beta, params):
    ratios = allocate_sparsity("atp", target, [], params, beta=beta)
    assert len(ratios) == len(params)
    assert weighted_mean(ratios, params) == pytest.approx(target, abs=1e-9)
    assert all(0.0 <= r <= 0.999 for r in ratios)
    assert all(a <= b + 1e-12 for a, b in zip(ratios, ratios[1:]))
    assert ratios[0] < ratios[-1]


@given(target=st.floats(0.01, 0.99), params=PARAM_LISTS)
def test_atp_with_beta_zero_is_uniform(target, params):
    assert allocate_sparsity("atp", target, [], params, beta=0.0) == allocate_sparsity("uniform", target, [], params)


def test_atp_unclipped_is_the_progression_and_needs_no_profiles():
    ratios = allocate_sparsity("atp", 0.5, [], [10] * 5, beta=0.02)
    assert ratios == pytest.approx([0.46, 0.48, 0.50, 0.52, 0.54], abs=1e-12)
    assert not needs_profiles("atp") and needs_profiles("sdsa")
    with pytest.raises(BadInputError, match="beta"):
        allocate_sparsity("atp", 0.5, [], [10] * 5, beta=-0.01)


def test_atp_through_the_layer_loop_keeps_early_blocks_denser(tiny_windows):
    from transformers import LlamaForCausalLM

    from conftest import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config()
    config.num_hidden_layers = 4
    model = LlamaForCausalLM(config).eval()
    result = prune_model(model, tiny_windows, method=get_metric("wanda"), sparsity=0.6, allocation="atp",
                         allocation_hyper={"beta": 0.05}, mode="one-shot", progress=False)
    assert result.block_sparsity == pytest.approx([0.525, 0.575, 0.625, 0.675])
    assert result.overall_sparsity == pytest.approx(0.6, abs=1e-3)


SKEWS_WITH_TWO_GIANTS = [10.5, 12.3, 14.9, 16.5, 25.9, 31.3, 45.9, 84.8, 490.3, 1613.3]  # SmolLM2-135M-like


def test_sdsa_log_skew_spreads_protection_beyond_the_two_largest_tails():
    profiles = [{"skewness": s} for s in SKEWS_WITH_TWO_GIANTS]
    params = [1] * len(profiles)
    raw = allocate_sparsity("sdsa", 0.7, profiles, params, source="score", transform="none", lam=0.1)
    logged = allocate_sparsity("sdsa", 0.7, profiles, params, source="score", transform="log", lam=0.1)
    for ratios in (raw, logged):
        assert weighted_mean(ratios, params) == pytest.approx(0.7, abs=1e-9)
        assert all(a >= b - 1e-12 for a, b in zip(ratios, ratios[1:]))   # heavier tail, lower sparsity
    # Raw third moments: the largest tail takes all the protection, the 8 ordinary blocks are
    # pushed within 0.005 of each other and even the second-heaviest tail stays at the target.
    assert max(raw[:8]) - min(raw[:8]) < 0.005 and raw[8] > 0.69
    assert max(logged[:8]) - min(logged[:8]) > 0.02 and logged[8] < 0.65


def test_sdsa_missing_profile_key_is_a_bad_input():
    with pytest.raises(BadInputError, match="weight_skewness"):
        allocate_sparsity("sdsa", 0.5, [{"skewness": 1.0}, {"skewness": 2.0}], [1, 1], source="weight")


def test_every_default_grid_point_is_a_valid_allocation():
    profiles = [{"skewness": s, "weight_skewness": s / 100, "outlier_ratio": 1 / s} for s in SKEWS_WITH_TWO_GIANTS]
    params = list(range(1, len(profiles) + 1))
    for name, grid in DEFAULT_GRIDS.items():
        assert 1 <= len(grid) <= 6
        for hyper in grid:
            ratios = allocate_sparsity(name, 0.6, profiles, params, **hyper)
            assert weighted_mean(ratios, params) == pytest.approx(0.6, abs=1e-9)


def test_tune_keeps_the_lowest_finite_score_and_rejects_all_inf():
    scores = {0.1: 5.0, 0.2: float("inf"), 0.3: 2.0, 0.4: float("nan")}
    tuned = tune("atp", [{"beta": b} for b in scores], lambda name, hyper: scores[hyper["beta"]])
    assert tuned.best == {"beta": 0.3} and tuned.best_score == 2.0
    assert [s["hyper"]["beta"] for s in tuned.scores] == [0.1, 0.2, 0.3, 0.4]
    with pytest.raises(BadInputError, match="inf or nan"):
        tune("atp", [{"beta": 0.1}], lambda name, hyper: float("inf"))
    with pytest.raises(BadInputError, match="empty"):
        tune("atp", [], lambda name, hyper: 1.0)


def test_tuner_picks_the_point_with_the_best_real_validation_perplexity(tiny_windows):
    from transformers import LlamaForCausalLM

    from conftest import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config()
    config.num_hidden_layers = 4
    model = LlamaForCausalLM(config).eval()
    validation = WindowSet(torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(7)),
                           "4x32 random validation tokens")
    dense = snapshot_weights(model, target_linears(model)).weights
    grid = [{"beta": b} for b in (0.0, 0.05, 0.1, 0.15)]
    proxy = validation_proxy(model, tiny_windows, validation, method=get_metric("wanda"), sparsity=0.6,
                             score=perplexity)
    tuned = tune("atp", grid, proxy)
    after = snapshot_weights(model, target_linears(model)).weights
    assert all(torch.equal(dense[n], after[n]) for n in dense)          # the proxy restores the dense model
    expected = []
    for hyper in grid:                                                   # the same evaluation, done by hand
        copy_ = copy.deepcopy(model)
        prune_model(copy_, tiny_windows, method=get_metric("wanda"), sparsity=0.6, allocation="atp",
                    allocation_hyper=hyper, mode="one-shot", progress=False)
        expected.append(perplexity(copy_, validation))
    assert [s["score"] for s in tuned.scores] == pytest.approx(expected, rel=1e-6)
    assert len(set(round(e, 6) for e in expected)) > 1                   # the grid points really differ
    assert tuned.best == grid[expected.index(min(expected))] and math.isfinite(tuned.best_score)
