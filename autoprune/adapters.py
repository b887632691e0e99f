"""The one place that knows model architectures.

An `ArchitectureAdapter` says where the decoder blocks are, which linear layers
inside a block are pruning targets (with their short names), and how to read a
block's output. Everything else (calibration, pruning loop, evaluation) is
written once against this small interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import ModelLoadError


@dataclass(frozen=True)
class ArchitectureAdapter:
    family: str
    blocks_path: str                     # dotted path from the model to the ModuleList of blocks
    linear_names: tuple[str, ...]        # dotted paths inside a block, in forward order
    model_types: tuple[str, ...]         # config.model_type values served by this adapter

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks_path)

    def linears(self, block: nn.Module) -> dict[str, nn.Module]:
        """Target linears of one block: full dotted name -> module (nn.Linear or GPT-2 Conv1D)."""
        return {name: block.get_submodule(name) for name in self.linear_names}

    @staticmethod
    def short_name(dotted: str) -> str:
        """'self_attn.q_proj' -> 'q_proj' (the name candidates see in ActivationStats.name)."""
        return dotted.rsplit(".", 1)[-1]

    @staticmethod
    def block_output(output) -> torch.Tensor:
        """Hidden states out of a block call (blocks return a tensor or a tuple)."""
        return output[0] if isinstance(output, (tuple, list)) else output


LLAMA = ArchitectureAdapter(
    family="llama",
    blocks_path="model.layers",
    linear_names=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    model_types=("llama", "qwen2", "qwen3", "mistral", "smollm3"),
)

OPT = ArchitectureAdapter(
    family="opt",
    blocks_path="model.decoder.layers",
    linear_names=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                  "fc1", "fc2"),
    model_types=("opt",),
)

GPT2 = ArchitectureAdapter(
    family="gpt2",
    blocks_path="transformer.h",
    linear_names=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    model_types=("gpt2",),
)

ADAPTERS = (LLAMA, OPT, GPT2)


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for a loaded transformers model, or a clear error for unsupported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    supported = ", ".join(t for a in ADAPTERS for t in a.model_types)
    raise ModelLoadError(f"model type {model_type!r} is not supported (supported: {supported})")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features). GPT-2's Conv1D stores it transposed."""
    weight = module.weight
    return weight.T if type(module).__name__ == "Conv1D" else weight


def set_linear_weight(module: nn.Module, value: torch.Tensor) -> None:
    """Write an (out_features, in_features) tensor back into the module's own layout."""
    with torch.no_grad():
        target = module.weight
        target.copy_(value.T if type(module).__name__ == "Conv1D" else value)
