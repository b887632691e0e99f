"""What an adapter is: where a model's decoder blocks live and which linears in a block are targets.

An `ArchitectureAdapter` says where the decoder blocks are, which linear layers inside a
block are pruning targets (with their short names and roles), and how to read a block's
output. Everything else (calibration, pruning loop, structured pruning, the sandbox
bundle) is written once against this small interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

# Roles a target linear plays in its block. "qkv" and "gate_up" are fused projections:
# the rows of several projections stacked in one matrix.
ATTENTION_ROLES = ("q", "k", "v", "qkv", "o")
MLP_ROLES = ("gate", "up", "gate_up", "down")
ROLES = ATTENTION_ROLES + MLP_ROLES
FUSED_ROLES = ("qkv", "gate_up")


@dataclass(frozen=True)
class ArchitectureAdapter:
    family: str
    blocks_path: str                     # dotted path from the model to the ModuleList of blocks
    linear_names: tuple[str, ...]        # dotted paths inside a block, in forward order
    model_types: tuple[str, ...] = ()    # config.model_type values served by this adapter
    roles: tuple[str, ...] = ()          # the role of each linear_names entry (see ROLES)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks_path)

    def linears(self, block: nn.Module) -> dict[str, nn.Module]:
        """Target linears of one block: full dotted name -> module (nn.Linear or GPT-2 Conv1D)."""
        return {name: block.get_submodule(name) for name in self.linear_names}

    def name_of(self, role: str) -> Optional[str]:
        """The dotted name inside a block of the linear with `role`, or None."""
        return dict(zip(self.roles, self.linear_names)).get(role)

    def has(self, *roles: str) -> bool:
        return all(role in self.roles for role in roles)

    @property
    def fused(self) -> tuple[str, ...]:
        """Dotted names of the fused projections (fine for unstructured / N:M, not for slicing)."""
        return tuple(name for name, role in zip(self.linear_names, self.roles) if role in FUSED_ROLES)

    @staticmethod
    def short_name(dotted: str) -> str:
        """'self_attn.q_proj' -> 'q_proj' (the name candidates see in ActivationStats.name)."""
        return dotted.rsplit(".", 1)[-1]

    @staticmethod
    def block_output(output) -> torch.Tensor:
        """Hidden states out of a block call (blocks return a tensor or a tuple)."""
        return output[0] if isinstance(output, (tuple, list)) else output


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D: a linear layer storing its weight as (in_features, out_features)."""
    return type(module).__name__ == "Conv1D"


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (is_conv1d(module) and getattr(module, "weight", None) is not None
                                            and module.weight.dim() == 2)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features). GPT-2's Conv1D stores it transposed."""
    weight = module.weight
    return weight.T if is_conv1d(module) else weight


def set_linear_weight(module: nn.Module, value: torch.Tensor) -> None:
    """Write an (out_features, in_features) tensor back into the module's own layout."""
    with torch.no_grad():
        target = module.weight
        target.copy_(value.T if is_conv1d(module) else value)
