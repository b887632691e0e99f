"""Structured pruning: GQA-aware head groups and MLP channels are removed for real."""

from __future__ import annotations

import pytest
import torch

from autoprune.data import WindowSet
from autoprune.errors import BadInputError, ModelLoadError
from autoprune.pruning.calibration import collect_activation_stats
from autoprune.pruning.refit import refit_kept_columns
from autoprune.pruning.structured import (REFIT_TARGETS, decoder_parameter_count, load_structured_model,
                                          prune_structured, structure_for_rates)


def hooked_stats(model, ids):
    """Dense input statistics of every target linear (the calibration code the product uses)."""
    return collect_activation_stats(model, WindowSet(ids, "test windows"))


def test_prune_shrinks_model_and_keeps_gqa_ratio(tiny_llama):
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    before = decoder_parameter_count(tiny_llama)
    structure = prune_structured(tiny_llama, [0.5, 0.0], hooked_stats(tiny_llama, ids))
    assert [s.intermediate for s in structure] == [64, 128]
    assert [s.kv_groups for s in structure] == [1, 2]
    attn = tiny_llama.model.layers[0].self_attn
    head_dim = 64 // 4
    assert attn.k_proj.weight.shape[0] == 1 * head_dim
    assert attn.q_proj.weight.shape[0] == 2 * head_dim  # 2 query heads share the kept KV head
    assert decoder_parameter_count(tiny_llama) < before
    with torch.no_grad():
        logits = tiny_llama(ids).logits
    assert torch.isfinite(logits).all()


def test_zero_rate_keeps_outputs_identical(tiny_llama):
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = tiny_llama(ids).logits
    prune_structured(tiny_llama, [0.0, 0.0], hooked_stats(tiny_llama, ids))
    with torch.no_grad():
        assert torch.allclose(tiny_llama(ids).logits, dense, atol=1e-5)


def test_save_and_reload_gives_the_same_logits(tiny_llama, tmp_path):
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    prune_structured(tiny_llama, [0.3, 0.6], hooked_stats(tiny_llama, ids))
    tiny_llama.save_pretrained(tmp_path)
    reloaded = load_structured_model(tmp_path)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, tiny_llama(ids).logits, atol=1e-5)


def test_bad_rates_and_unstructured_folders_are_clear_errors(tiny_llama, tiny_gpt2, tmp_path):
    with pytest.raises(BadInputError, match="2 layers"):
        structure_for_rates(tiny_llama, [0.5])
    with pytest.raises(BadInputError, match=r"\[0, 1\)"):
        structure_for_rates(tiny_llama, [0.5, 1.0])
    with pytest.raises(BadInputError, match="fuses attn.c_attn"):
        structure_for_rates(tiny_gpt2, [0.5, 0.5])
    tiny_llama.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="autoprune_structure"):
        load_structured_model(tmp_path)


def test_refit_is_the_least_squares_fit_and_recovers_redundant_channels():
    gen = torch.Generator().manual_seed(3)
    kept = torch.tensor([0, 2, 3, 5])
    base = torch.randn(400, 4, generator=gen)
    mix = torch.randn(4, 2, generator=gen)
    x = torch.zeros(400, 6)
    x[:, kept] = base
    x[:, [1, 4]] = base @ mix                       # the removed channels are combinations of kept ones
    weight = torch.randn(3, 6, generator=gen)
    gram = x.T @ x
    fitted = refit_kept_columns(weight, gram, kept, damp=1e-9)
    assert torch.allclose(x[:, kept] @ fitted.T, x @ weight.T, atol=1e-3)   # output recovered exactly
    lstsq = torch.linalg.lstsq(x[:, kept].double(), (x @ weight.T).double()).solution.T
    assert torch.allclose(fitted.double(), lstsq, atol=1e-3)
    sliced_error = (x[:, kept] @ weight[:, kept].T - x @ weight.T).norm()
    assert sliced_error > 1.0                                               # plain slicing loses them
    strong = refit_kept_columns(weight, gram, kept, damp=1e9)
    assert torch.allclose(strong, weight[:, kept], atol=1e-4)               # heavy damping = dense columns
    with pytest.raises(ValueError, match="damp"):
        refit_kept_columns(weight, gram, kept, damp=0.0)


def test_grams_can_be_collected_for_the_refit_targets_only(tiny_llama):
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(4))
    stats = collect_activation_stats(tiny_llama, WindowSet(ids, "test windows"), with_gram=REFIT_TARGETS)
    with_gram = sorted(name.split(".", 3)[-1] for name, s in stats.items() if s.gram is not None)
    assert with_gram == sorted(list(REFIT_TARGETS) * 2)                     # two blocks
    with pytest.raises(BadInputError, match="XᵀX"):
        prune_structured(tiny_llama, [0.5, 0.5], hooked_stats(tiny_llama, ids), reconstruct=True)


def test_reconstruction_brings_pruned_outputs_closer_to_dense(tiny_llama):
    import copy

    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(5))
    stats = collect_activation_stats(tiny_llama, WindowSet(ids, "test windows"), with_gram=REFIT_TARGETS)
    with torch.no_grad():
        dense = tiny_llama(ids).logits
    errors = {}
    for reconstruct in (False, True):
        model = copy.deepcopy(tiny_llama)
        prune_structured(model, [0.5, 0.5], stats, reconstruct=reconstruct)
        with torch.no_grad():
            errors[reconstruct] = (model(ids).logits - dense).pow(2).mean().item()
    assert errors[True] < 0.8 * errors[False]
