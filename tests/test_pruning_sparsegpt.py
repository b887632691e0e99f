"""SparseGPT / OBS: exact masks, and the fixed-mask update beats mask-only on layer output error."""

from __future__ import annotations

import pytest
import torch

from autoprune.pruning.masks import SparsityPattern, scores_to_mask, verify_mask
from autoprune.pruning.metrics import get_metric
from autoprune.pruning.sparsegpt import reconstruct, sparsegpt_prune
from autoprune.pruning.stats import RunningChannelStats


def correlated_layer(out_features=48, in_features=160, tokens=2048, seed=0):
    """A weight and strongly correlated, low-rank-plus-noise inputs (as real LLM activations are)."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(tokens, in_features // 5, generator=g)
    X = factors @ torch.randn(in_features // 5, in_features, generator=g)
    X += 0.1 * torch.randn(tokens, in_features, generator=g)
    X[:, :8] *= 6.0  # a few outlier channels
    W = torch.randn(out_features, in_features, generator=g)
    running = RunningChannelStats(in_features, with_gram=True)
    running.update(X)
    return W, X, running.finish(layer_index=0, num_layers=1, name="fc")


def output_error(W, W_new, X):
    return float(((X @ W.T - X @ W_new.T) ** 2).mean())


@pytest.mark.parametrize("metric", ["magnitude", "wanda"])
def test_reconstruct_reduces_output_error_for_a_fixed_mask(metric):
    W, X, stats = correlated_layer()
    m = get_metric(metric)
    mask = scores_to_mask(m.score(W, stats), 0.5, group=m.group)
    W_rec = reconstruct(W, mask, stats.gram)
    assert torch.equal(W_rec != 0, mask & (W != 0))  # the mask is kept exactly
    assert output_error(W, W_rec, X) < 0.8 * output_error(W, W * mask, X)


def test_sparsegpt_prunes_exactly_and_beats_wanda_mask_only():
    W, X, stats = correlated_layer()
    mask, W_new = sparsegpt_prune(W, stats.gram, 0.6)
    verify_mask(mask, tuple(W.shape), 0.6, group="layer")
    assert bool((W_new[~mask] == 0).all())
    wanda = scores_to_mask(get_metric("wanda").score(W, stats), 0.6)
    assert output_error(W, W_new, X) < output_error(W, W * wanda, X)


@pytest.mark.parametrize("text", ["2:4", "4:8"])
def test_sparsegpt_n_m(text):
    W, X, stats = correlated_layer()
    pattern = SparsityPattern.parse(text)
    mask, W_new = sparsegpt_prune(W, stats.gram, 0.5, pattern)
    verify_mask(mask, tuple(W.shape), 0.5, pattern=pattern)
    assert bool((W_new[~mask] == 0).all())


def test_dead_inputs_do_not_break_the_hessian():
    W, X, stats = correlated_layer()
    gram = stats.gram.clone()
    gram[3, :] = 0
    gram[:, 3] = 0
    mask, W_new = sparsegpt_prune(W, gram, 0.5)
    assert torch.isfinite(W_new).all()
    assert bool((W_new[:, 3] == 0).all())


def test_a_cached_factor_gives_the_uncached_update_also_with_dead_inputs():
    from autoprune.pruning.sparsegpt import ObsFactor

    W, X, stats = correlated_layer()
    X[:, 3] = 0.0                                     # an input that never fires
    gram = X.T @ X
    factor = ObsFactor.of(gram)
    assert bool(factor.dead[3]) and int(factor.dead.sum()) == 1
    for metric in ("wanda", "magnitude"):
        m = get_metric(metric)
        mask = scores_to_mask(m.score(W, stats), 0.5, group=m.group)
        cached = reconstruct(W, mask, factor=factor)
        assert torch.equal(cached, reconstruct(W, mask, gram))
        assert torch.all(cached[:, 3] == 0) and torch.equal(W, correlated_layer()[0])   # W itself untouched
    with pytest.raises(ValueError, match="XᵀX or its ObsFactor"):
        reconstruct(W, mask)


def textbook_obs(W, U, mask):
    """The fixed-mask OBS sweep as defined: one column at a time, its error pushed onto every later column."""
    W = W.clone()
    for j in range(W.shape[1]):
        err = W[:, j] * (~mask[:, j]) / U[j, j]
        W[:, j:] -= err[:, None] * U[j, j:][None, :]
    return W * mask


def test_the_blocked_sweep_is_the_textbook_sweep_and_the_factor_is_the_cholesky_of_the_inverse():
    from autoprune.pruning.sparsegpt import ObsFactor, damped_inverse_hessian

    W, X, stats = correlated_layer(out_features=40, in_features=300)     # blocks of 128 and 32: 3 and 10
    X[:, 7] = 0.0
    gram = X.T @ X
    factor = ObsFactor.of(gram)
    expected_U = torch.linalg.cholesky(damped_inverse_hessian(gram), upper=True)
    assert torch.allclose(factor.U.double(), expected_U, rtol=1e-6, atol=1e-7 * float(expected_U.abs().max()))
    mask = scores_to_mask(get_metric("wanda").score(W, stats), 0.5)
    got = reconstruct(W, mask, factor=factor)
    want = textbook_obs(W.double(), factor.U.double(), mask & ~factor.dead)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert torch.equal(got != 0, mask & ~factor.dead & (got != 0)) and bool((got[:, 7] == 0).all())


@pytest.mark.parametrize("text", ["unstructured", "2:4", "4:8"])
def test_the_sub_block_size_changes_nothing_but_rounding(text):
    from autoprune.pruning.sparsegpt import inverse_hessian_factor, obs_sweep

    W, X, stats = correlated_layer(out_features=40, in_features=300)
    U = inverse_hessian_factor(stats.gram, W.clone())
    pattern = SparsityPattern.parse(text)
    (mask1, W1), (mask32, W32) = (obs_sweep(W, U, mask=None, sparsity=0.5, pattern=pattern, inner=inner)
                                  for inner in (1, 32))
    assert torch.equal(mask1, mask32)
    assert torch.allclose(W1, W32, rtol=1e-5, atol=1e-6 * float(W1.abs().max()))
