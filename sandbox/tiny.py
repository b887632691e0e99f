"""A tiny random Llama and synthetic statistics: the bundle `sandbox check` and tests probe with."""

from __future__ import annotations

from pathlib import Path

import torch

from autoprune.adapters import adapter_for, linear_weight
from autoprune.pruning.stats import RunningChannelStats
from autoprune.sandbox.bundle import ScoringBundle, write_scoring_bundle


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    return LlamaForCausalLM(config).eval()


def synthetic_stats(model, seed: int = 0, tokens: int = 64) -> dict:
    """ActivationStats from random heavy-tailed inputs (no calibration pass needed)."""
    generator = torch.Generator().manual_seed(seed)
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    stats = {}
    for index, block in enumerate(blocks):
        for dotted, module in adapter.linears(block).items():
            in_features = linear_weight(module).shape[1]
            x = torch.randn(tokens, in_features, generator=generator)
            x = x * torch.rand(in_features, generator=generator).pow(3).mul(10)
            running = RunningChannelStats(in_features)
            running.update(x)
            name = f"{adapter.blocks_path}.{index}.{dotted}"
            stats[name] = running.finish(layer_index=index, num_layers=len(blocks),
                                         name=adapter.short_name(dotted))
    return stats


def tiny_bundle(folder: str | Path, seed: int = 0) -> ScoringBundle:
    model = tiny_llama(seed)
    return write_scoring_bundle(model, synthetic_stats(model, seed), folder)
