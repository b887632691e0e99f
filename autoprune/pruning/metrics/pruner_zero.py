"""Pruner-Zero's published metric (Dong et al. 2024): |W ⊙ W| ⊙ mms(G).

G is the per-weight gradient magnitude of the LM loss on calibration text
(ℓ2 over the windows, `ActivationStats.grad`); mms is min-max scaling over the
layer. This is the expression tree the paper's genetic search found best.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from autoprune.errors import BadInputError
from autoprune.pruning.stats import ActivationStats


def min_max_scale(x: Tensor) -> Tensor:
    low, high = x.min(), x.max()
    span = high - low
    return torch.zeros_like(x) if span <= 0 else (x - low) / span


@dataclass(frozen=True)
class PrunerZeroMetric:
    name: str = "pruner-zero"
    group: str = "row"
    needs_gram: bool = False
    needs_grad: bool = True

    def score(self, W: Tensor, X: ActivationStats) -> Tensor:
        if X.grad is None:
            raise BadInputError(f"pruner-zero needs gradients: {X.name} has none (calibrate with_grad=True)")
        return (W * W).abs() * min_max_scale(X.grad.to(W.dtype))


METRIC = PrunerZeroMetric()
