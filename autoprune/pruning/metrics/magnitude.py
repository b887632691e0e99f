"""Magnitude pruning: |W|, ranked over the whole layer (the usual baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from autoprune.pruning.stats import ActivationStats


@dataclass(frozen=True)
class MagnitudeMetric:
    name: str = "magnitude"
    group: str = "layer"
    needs_gram: bool = False
    needs_grad: bool = False

    def score(self, W: Tensor, X: ActivationStats) -> Tensor:
        return W.abs()


METRIC = MagnitudeMetric()
