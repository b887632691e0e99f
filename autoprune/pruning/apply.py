"""Apply masks to a resident model and put the dense weights back.

Works through `adapters.linear_weight / set_linear_weight`, so GPT-2's Conv1D
(weights stored transposed) is handled like nn.Linear.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from autoprune.adapters import linear_weight, set_linear_weight
from autoprune.errors import MaskError


@dataclass
class WeightSnapshot:
    """Copies of the dense (out, in) weights of the layers a change touched."""

    weights: dict[str, torch.Tensor]


def snapshot_weights(model: nn.Module, names) -> WeightSnapshot:
    return WeightSnapshot({name: linear_weight(model.get_submodule(name)).detach().clone() for name in names})


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> WeightSnapshot:
    """Zero every weight whose mask entry is False, in place; returns what `restore` needs."""
    snapshot = snapshot_weights(model, masks)
    for name, mask in masks.items():
        module = model.get_submodule(name)
        weight = linear_weight(module)
        if tuple(mask.shape) != tuple(weight.shape):
            raise MaskError(f"{name}: mask shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        set_linear_weight(module, weight.detach() * mask.to(device=weight.device, dtype=weight.dtype))
    return snapshot


def set_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Write (out, in) weights into the named layers (e.g. reconstructed ones)."""
    for name, value in weights.items():
        module = model.get_submodule(name)
        set_linear_weight(module, value.to(device=module.weight.device, dtype=module.weight.dtype))


def restore(model: nn.Module, snapshot: WeightSnapshot) -> None:
    """Put back the dense weights recorded by `apply_masks` / `snapshot_weights`."""
    set_weights(model, snapshot.weights)


@contextmanager
def weights_applied(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """(out, in) weights (e.g. refitted ones) swapped into the named layers for the duration of the
    block; the weights they replace come back afterwards, also on errors."""
    snapshot = snapshot_weights(model, list(weights))
    try:
        for name, value in weights.items():
            shape = tuple(linear_weight(model.get_submodule(name)).shape)
            if tuple(value.shape) != shape:
                raise MaskError(f"{name}: new weight shape {tuple(value.shape)}, layer {shape}")
        set_weights(model, dict(weights))
        yield
    finally:
        restore(model, snapshot)


@contextmanager
def masks_applied(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Masks applied for the duration of the block; the dense weights come back even on errors."""
    snapshot = snapshot_weights(model, list(masks))
    try:
        apply_masks(model, dict(masks))
        yield
    finally:
        restore(model, snapshot)
