"""Search-time fitness after the trusted one-shot refit: it equals masks + per-layer OBS (or exact)
reconstruction + NLL computed directly, it always puts the dense weights back, and the cached
per-input factors give exactly the weights of an uncached `sparsegpt.reconstruct`."""

from __future__ import annotations

import copy

import pytest
import torch

from autoprune.adapters import linear_weight, set_linear_weight
from autoprune.agent.fitness import FitnessService
from autoprune.data import WindowSet
from autoprune.evaluators.perplexity import window_nlls
from autoprune.pruning.calibration import collect_activation_stats, target_linears
from autoprune.pruning.mask_refit import HessianFactors, refit_weights, refitted
from autoprune.pruning.masks import scores_to_mask
from autoprune.pruning.metrics import get_metric
from autoprune.pruning.reconstruct import RECONSTRUCTIONS
from autoprune.pruning.sparsegpt import reconstruct


def windows(n: int, seed: int) -> WindowSet:
    generator = torch.Generator().manual_seed(seed)
    return WindowSet(torch.randint(0, 256, (n, 32), generator=generator), f"{n}x32 random tokens")


@pytest.fixture
def calibrated(tiny_llama):
    stats = collect_activation_stats(tiny_llama, windows(8, seed=1), with_gram=True)
    wanda = get_metric("wanda")
    masks = {name: scores_to_mask(wanda.score(linear_weight(m).detach(), stats[name]), 0.6)
             for name, (_, m) in target_linears(tiny_llama).items()}
    return tiny_llama, stats, masks


def dense_weights(model) -> dict[str, torch.Tensor]:
    return {name: linear_weight(m).detach().clone() for name, (_, m) in target_linears(model).items()}


def direct_nlls(model, stats, masks, kind: str, fitness_windows: WindowSet) -> torch.Tensor:
    """The reference: a copy of the model, each layer reconstructed on its own (the layer loop's
    plug-in, no cache), then the plain NLL of every window."""
    pruned = copy.deepcopy(model)
    for name, (_, module) in target_linears(pruned).items():
        W = linear_weight(module).detach().float()
        set_linear_weight(module, RECONSTRUCTIONS[kind](W, masks[name], stats[name], None))
    return window_nlls(pruned, fitness_windows)


@pytest.mark.parametrize("kind", ["obs", "exact", "none"])
def test_fitness_with_refit_equals_the_direct_computation(calibrated, kind):
    model, stats, masks = calibrated
    evaluation = windows(4, seed=3)
    fitness = FitnessService(model, evaluation, [2, 4], refit=kind, stats=stats)
    cheap = fitness.evaluate("c", lambda: masks, 0)
    full = fitness.evaluate("c", lambda: masks, 1)              # a promotion: only windows 2, 3 computed
    expected = direct_nlls(model, stats, masks, kind, evaluation)
    assert full[:2] == cheap
    assert torch.allclose(torch.tensor(full), expected, rtol=1e-4, atol=1e-5)
    masked_only = direct_nlls(model, stats, masks, "none", evaluation)
    if kind != "none":                                           # the refit really changed the weights
        assert float((torch.tensor(full) - masked_only).abs().max()) > 1e-3
        assert fitness.last_timings["refit_s"] > 0 and "refitted" in fitness.describe()


def test_the_dense_weights_come_back_after_evaluate_and_after_an_exception(calibrated):
    model, stats, masks = calibrated
    dense = dense_weights(model)
    fitness = FitnessService(model, windows(4, seed=3), [2, 4], refit="obs", stats=stats)
    fitness.evaluate("c", lambda: masks, 1)
    assert all(torch.equal(linear_weight(model.get_submodule(n)), w) for n, w in dense.items())
    # a forward that fails after the refitted weights are in: token ids beyond the vocabulary
    broken = FitnessService(model, WindowSet(torch.full((2, 32), 10_000), "bad ids"), [2], refit="obs",
                            stats=stats)
    with pytest.raises(IndexError):
        broken.evaluate("d", lambda: masks, 0)
    assert all(torch.equal(linear_weight(model.get_submodule(n)), w) for n, w in dense.items())
    name = next(iter(masks))
    with pytest.raises(RuntimeError, match="inside"):
        with refitted(model, masks, HessianFactors.from_stats(stats), "exact"):
            assert not torch.equal(linear_weight(model.get_submodule(name)), dense[name])
            raise RuntimeError("inside the block")
    assert all(torch.equal(linear_weight(model.get_submodule(n)), w) for n, w in dense.items())


def test_cached_factors_give_the_uncached_weights_and_are_shared_per_input(calibrated):
    model, stats, masks = calibrated
    factors = HessianFactors.from_stats(stats)
    for _ in range(2):                                           # second time from the cache
        weights = refit_weights(model, masks, factors, "obs")
        for name, (_, module) in target_linears(model).items():
            expected = reconstruct(linear_weight(module).detach(), masks[name], stats[name].gram.clone())
            assert torch.equal(weights[name], expected), name
            assert torch.equal(weights[name] != 0, masks[name] & (weights[name] != 0))
    # q/k/v read one input and gate/up another: 4 factors per block, not 7
    assert factors.num_inputs == 4 * len(model.model.layers)
    block = "model.layers.0."
    q, k, v = (factors.obs(block + f"self_attn.{p}_proj", "cpu") for p in "qkv")
    assert q is k is v and factors.obs(block + "mlp.gate_proj", "cpu") is factors.obs(block + "mlp.up_proj", "cpu")


def test_a_refit_without_the_calibration_grams_is_refused(tiny_llama):
    from autoprune.errors import BadInputError

    stats = collect_activation_stats(tiny_llama, windows(2, seed=1))
    with pytest.raises(BadInputError, match="with_gram=True"):
        FitnessService(tiny_llama, windows(2, seed=3), [2], refit="obs", stats=stats)
    with pytest.raises(ValueError, match="XᵀX"):
        FitnessService(tiny_llama, windows(2, seed=3), [2], refit="obs")
