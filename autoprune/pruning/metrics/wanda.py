"""Wanda (Sun et al. 2023): |W_ij| · ‖X_j‖₂, compared within each output row."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from autoprune.pruning.stats import ActivationStats


@dataclass(frozen=True)
class WandaMetric:
    name: str = "wanda"
    group: str = "row"
    needs_gram: bool = False
    needs_grad: bool = False

    def score(self, W: Tensor, X: ActivationStats) -> Tensor:
        return W.abs() * X.norm.reshape(1, -1)


METRIC = WandaMetric()
