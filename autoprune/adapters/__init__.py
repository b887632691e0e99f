"""The one place that knows model architectures.

`adapter_for(model)` reads any decoder-only causal LM's layout from its module tree
(`discovery`); the families below are fast paths whose layout is known in advance (and
checked against the model before use). Everything else (calibration, the pruning loop,
structured pruning, the sandbox bundle) is written once against `ArchitectureAdapter`.
"""

from __future__ import annotations

import weakref

from torch import nn

from autoprune.adapters.discovery import UnsupportedArchitectureError, discover_adapter
from autoprune.adapters.layout import (ATTENTION_ROLES, FUSED_ROLES, MLP_ROLES, ROLES, ArchitectureAdapter,
                                       is_conv1d, is_linear, linear_weight, set_linear_weight)

__all__ = ["ADAPTERS", "ATTENTION_ROLES", "FUSED_ROLES", "GPT2", "LLAMA", "MLP_ROLES", "OPT", "ROLES",
           "ArchitectureAdapter", "UnsupportedArchitectureError", "adapter_for", "is_conv1d", "is_linear",
           "linear_weight", "set_linear_weight"]

LLAMA = ArchitectureAdapter(
    family="llama",
    blocks_path="model.layers",
    linear_names=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    model_types=("llama", "qwen2", "qwen3", "mistral", "smollm3"),
    roles=("q", "k", "v", "o", "gate", "up", "down"),
)

OPT = ArchitectureAdapter(
    family="opt",
    blocks_path="model.decoder.layers",
    linear_names=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                  "fc1", "fc2"),
    model_types=("opt",),
    roles=("q", "k", "v", "o", "up", "down"),
)

GPT2 = ArchitectureAdapter(
    family="gpt2",
    blocks_path="transformer.h",
    linear_names=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    model_types=("gpt2",),
    roles=("qkv", "o", "up", "down"),
)

ADAPTERS = (LLAMA, OPT, GPT2)
_FOUND: "weakref.WeakKeyDictionary[nn.Module, ArchitectureAdapter]" = weakref.WeakKeyDictionary()


def fits(adapter: ArchitectureAdapter, model: nn.Module) -> bool:
    """Whether a known family's layout is really the model's (a fast path is never taken on trust)."""
    try:
        blocks = adapter.blocks(model)
        return isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and all(
            is_linear(m) for m in adapter.linears(blocks[0]).values())
    except AttributeError:
        return False


def known_adapter(model: nn.Module) -> ArchitectureAdapter | None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return next((a for a in ADAPTERS if model_type in a.model_types and fits(a, model)), None)


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for a loaded causal LM (known family or discovered), or one clear
    UnsupportedArchitectureError. Found once per model object: slicing or pruning it later
    does not change where its blocks and linears are."""
    adapter = _FOUND.get(model)
    if adapter is None:
        adapter = known_adapter(model) or discover_adapter(model)
        _FOUND[model] = adapter
    return adapter
