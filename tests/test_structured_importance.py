"""Unit importance for structured pruning: activation (structured Wanda) and first-order Taylor."""

from __future__ import annotations

import copy

import pytest
import torch

from autoprune.data import WindowSet
from autoprune.errors import BadInputError
from autoprune.pruning.calibration import collect_activation_stats
from autoprune.pruning.structured import attention_geometry, prune_structured
from autoprune.pruning.structured_importance import (activation_importance, structured_importance,
                                                     taylor_importance)


def windows(seed: int = 0, n: int = 3) -> WindowSet:
    return WindowSet(torch.randint(0, 256, (n, 24), generator=torch.Generator().manual_seed(seed)), "test windows")


def test_taylor_scores_are_the_mean_squared_first_order_change_per_unit(tiny_llama):
    """Reference: autograd of each window's loss, then (w·g)² averaged over windows and summed by hand
    over the rows/columns each MLP channel and each KV group owns (GQA: 2 query heads per KV head)."""
    head_dim, _, group_size = attention_geometry(tiny_llama)
    data = windows()
    layer = tiny_llama.model.layers[1]
    weights = ([getattr(layer.mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj")]
               + [getattr(layer.self_attn, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj")])
    s = [torch.zeros_like(w) for w in weights]
    for ids in data.ids:
        grads = torch.autograd.grad(tiny_llama(ids[None], labels=ids[None]).loss, weights)
        s = [acc + (w * g).detach() ** 2 / len(data) for acc, w, g in zip(s, weights, grads)]
    channel = 5
    expected_channel = s[0][channel].sum() + s[1][channel].sum() + s[2][:, channel].sum()
    group, q_width = 1, group_size * head_dim
    expected_group = (s[3][group * q_width:(group + 1) * q_width].sum() + s[4][group * head_dim:(group + 1) * head_dim].sum()
                      + s[5][group * head_dim:(group + 1) * head_dim].sum() + s[6][:, group * q_width:(group + 1) * q_width].sum())

    scores = taylor_importance(tiny_llama, data, head_dim, group_size)
    assert len(scores) == 2 and scores[1].mlp.shape == (128,) and scores[1].kv_groups.shape == (2,)
    assert torch.allclose(scores[1].mlp[channel], expected_channel, rtol=1e-4)
    assert torch.allclose(scores[1].kv_groups[group], expected_group, rtol=1e-4)
    assert all(p.requires_grad for p in tiny_llama.parameters())          # flags restored
    assert all(p.grad is None for p in tiny_llama.parameters())


def test_a_dead_unit_scores_zero_and_goes_first(tiny_llama):
    head_dim, _, group_size = attention_geometry(tiny_llama)
    mlp = tiny_llama.model.layers[0].mlp
    with torch.no_grad():
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[7].zero_()
        mlp.down_proj.weight[:, 7].zero_()
    scores = taylor_importance(tiny_llama, windows(1), head_dim, group_size)
    assert scores[0].mlp[7] == 0 and (scores[0].mlp > 0).sum() == 127
    prune_structured(tiny_llama, [0.3, 0.0], {}, importance=scores)
    kept_rows = tiny_llama.model.layers[0].mlp.gate_proj.weight
    assert not (kept_rows == 0).all(dim=1).any()                           # the dead channel was removed


def test_activation_importance_is_the_default_of_prune_structured(tiny_llama):
    head_dim, _, group_size = attention_geometry(tiny_llama)
    stats = collect_activation_stats(tiny_llama, windows(2))
    explicit, default = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    prune_structured(explicit, [0.5, 0.4], stats,
                     importance=activation_importance(tiny_llama, stats, head_dim, group_size))
    prune_structured(default, [0.5, 0.4], stats)
    ids = windows(3, 1).ids
    with torch.no_grad():
        assert torch.equal(explicit(ids).logits, default(ids).logits)


def test_unknown_importance_is_a_clear_error(tiny_llama):
    with pytest.raises(BadInputError, match="activation, taylor"):
        structured_importance("fisher", tiny_llama, {}, windows(), 16, 2)
