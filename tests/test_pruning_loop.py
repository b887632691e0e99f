"""The one layer loop on tiny Llama, OPT and GPT-2 models: every baseline, both modes."""

from __future__ import annotations

import math

import pytest
import torch

from autoprune.adapters import adapter_for, linear_weight
from autoprune.errors import BadInputError, MaskError
from autoprune.evaluators.perplexity import perplexity
from autoprune.pruning.apply import apply_masks, restore
from autoprune.pruning.calibration import (capture_block_inputs, collect_activation_stats, run_block,
                                           target_linears)
from autoprune.pruning.loop import prune_model
from autoprune.pruning.masks import SparsityPattern
from autoprune.pruning.methods import PrecomputedMasks
from autoprune.pruning.metrics import get_metric
from autoprune.pruning.metrics.candidate import CandidateMetric
from autoprune.pruning.sparsegpt import SparseGPTPruner

METHODS = ["magnitude", "wanda", "ria", "pruner-zero", "sparsegpt"]


def method_of(name):
    return SparseGPTPruner() if name == "sparsegpt" else get_metric(name)


def zero_fraction(model) -> float:
    weights = [linear_weight(m) for _, m in target_linears(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


@pytest.mark.parametrize("name", METHODS)
def test_each_baseline_prunes_exactly_on_each_family(tiny_model, tiny_windows, name):
    result = prune_model(tiny_model, tiny_windows, method=method_of(name), sparsity=0.5, progress=False)
    assert set(result.masks) == set(target_linears(tiny_model))
    for layer, sparsity in result.layer_sparsity.items():
        assert sparsity == pytest.approx(0.5), layer
    assert zero_fraction(tiny_model) >= 0.5
    assert math.isfinite(perplexity(tiny_model, tiny_windows))


@pytest.mark.parametrize("mode", ["sequential", "one-shot"])
@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
def test_both_modes_work_and_differ_only_through_statistics(tiny_llama, tiny_windows, mode, name):
    result = prune_model(tiny_llama, tiny_windows, method=method_of(name), sparsity=0.6, mode=mode, progress=False)
    assert result.mode == mode
    assert result.overall_sparsity == pytest.approx(0.6, abs=0.01)
    assert math.isfinite(perplexity(tiny_llama, tiny_windows))


def test_sequential_first_block_equals_one_shot_first_block(tiny_llama, tiny_windows):
    import copy

    other = copy.deepcopy(tiny_llama)
    seq = prune_model(tiny_llama, tiny_windows, method=get_metric("wanda"), sparsity=0.5, progress=False)
    one = prune_model(other, tiny_windows, method=get_metric("wanda"), sparsity=0.5, mode="one-shot", progress=False)
    first = [n for n in seq.masks if ".0." in n]
    assert all(torch.equal(seq.masks[n], one.masks[n]) for n in first)   # same dense inputs
    assert any(not torch.equal(seq.masks[n], one.masks[n]) for n in seq.masks if ".1." in n)


@pytest.mark.parametrize("allocation", ["owl", "sdsa"])
def test_allocations_move_block_sparsity_but_keep_the_mean(tiny_opt, tiny_windows, allocation):
    result = prune_model(tiny_opt, tiny_windows, method=get_metric("wanda"), sparsity=0.5,
                         allocation=allocation, progress=False)
    assert result.block_sparsity[0] != pytest.approx(result.block_sparsity[1])
    assert sum(result.block_sparsity) / 2 == pytest.approx(0.5, abs=1e-9)   # equal-sized blocks
    assert len(result.block_profiles) == 2


def test_two_four_pattern(tiny_gpt2, tiny_windows):
    result = prune_model(tiny_gpt2, tiny_windows, method=get_metric("wanda"), sparsity=0.5, pattern="2:4",
                         progress=False)
    for name, mask in result.masks.items():
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all(), name
    with pytest.raises(BadInputError, match="uniform"):
        prune_model(tiny_gpt2, tiny_windows, method=get_metric("wanda"), sparsity=0.5, pattern="2:4",
                    allocation="owl", progress=False)


def test_pattern_that_does_not_divide_a_layer_is_rejected(tiny_llama, tiny_windows):
    with pytest.raises(BadInputError, match="multiple of 5"):
        prune_model(tiny_llama, tiny_windows, method=get_metric("wanda"), sparsity=0.5,
                    pattern=SparsityPattern(2, 5), progress=False)


def test_reconstruction_after_a_metric_lowers_perplexity_at_high_sparsity(tiny_llama, tiny_windows):
    import copy

    plain = copy.deepcopy(tiny_llama)
    prune_model(plain, tiny_windows, method=get_metric("magnitude"), sparsity=0.7, progress=False)
    result = prune_model(tiny_llama, tiny_windows, method=get_metric("magnitude"), sparsity=0.7,
                         reconstruct=True, progress=False)
    assert result.reconstruct
    assert perplexity(tiny_llama, tiny_windows) < perplexity(plain, tiny_windows)


def test_precomputed_masks_are_verified_and_applied(tiny_llama, tiny_windows):
    scores = {n: torch.rand(linear_weight(m).shape) for n, (_, m) in target_linears(tiny_llama).items()}
    from autoprune.pruning.masks import scores_to_mask

    masks = {n: scores_to_mask(s, 0.5) for n, s in scores.items()}
    method = PrecomputedMasks(masks, {n: 0.5 for n in masks})
    result = prune_model(tiny_llama, tiny_windows, method=method, sparsity=0.5, progress=False)
    for name, (_, module) in target_linears(tiny_llama).items():
        assert torch.equal(linear_weight(module) != 0, masks[name] & (result.masks[name]))
    bad = {**masks, next(iter(masks)): torch.ones_like(next(iter(masks.values())))}
    with pytest.raises(MaskError):
        prune_model(tiny_llama, tiny_windows, method=PrecomputedMasks(bad, {n: 0.5 for n in bad}),
                    sparsity=0.5, progress=False)


def test_candidate_metric_from_trusted_callable(tiny_opt, tiny_windows):
    metric = CandidateMetric.from_namespace({"score": lambda W, X: W.abs() * X.max_abs, "GROUP": "layer"})
    result = prune_model(tiny_opt, tiny_windows, method=metric, sparsity=0.4, progress=False)
    assert result.method == "candidate"
    assert result.overall_sparsity == pytest.approx(0.4, abs=0.01)


def test_apply_and_restore_roundtrip_with_conv1d(tiny_gpt2):
    names = target_linears(tiny_gpt2)
    dense = {n: linear_weight(m).detach().clone() for n, (_, m) in names.items()}
    masks = {n: torch.rand(w.shape) > 0.5 for n, w in dense.items()}
    snapshot = apply_masks(tiny_gpt2, masks)
    for n, (_, m) in names.items():
        assert torch.equal(linear_weight(m), dense[n] * masks[n])
    restore(tiny_gpt2, snapshot)
    assert all(torch.equal(linear_weight(m), dense[n]) for n, (_, m) in names.items())


def test_block_capture_reproduces_the_model_hidden_states(tiny_model, tiny_windows):
    adapter = adapter_for(tiny_model)
    inputs = capture_block_inputs(tiny_model, tiny_windows, batch_size=8)
    for block in adapter.blocks(tiny_model):
        inputs = run_block(block, inputs)
    with torch.no_grad():
        hidden = tiny_model(tiny_windows.ids, output_hidden_states=True, use_cache=False).hidden_states
    # The last hidden state has the final norm applied; the one before is the last block's output.
    last_block = hidden[-1] if tiny_model.config.model_type == "gpt2" else None
    first = run_block(adapter.blocks(tiny_model)[0], capture_block_inputs(tiny_model, tiny_windows, batch_size=8))
    assert torch.allclose(first[0].hidden, hidden[1], atol=1e-5)
    assert last_block is None or inputs[0].hidden.shape == last_block.shape


def test_calibration_stats_keys_grad_and_cache(tiny_llama, tiny_windows, tmp_path):
    stats = collect_activation_stats(tiny_llama, tiny_windows, with_gram=True, with_grad=True, cache_dir=tmp_path)
    assert set(stats) == set(target_linears(tiny_llama))
    s = stats["model.layers.1.mlp.down_proj"]
    assert s.name == "down_proj" and s.layer_index == 1 and s.num_layers == 2
    assert s.gram.shape == (128, 128) and s.grad.shape == (64, 128)
    assert s.nsamples == tiny_windows.ids.numel()
    assert torch.allclose(s.norm ** 2, torch.diagonal(s.gram), rtol=1e-4)
    again = collect_activation_stats(tiny_llama, tiny_windows, with_gram=True, with_grad=True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert torch.equal(again["model.layers.1.mlp.down_proj"].grad, s.grad)
