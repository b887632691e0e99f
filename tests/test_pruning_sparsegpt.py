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
