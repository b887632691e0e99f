"""RIA (Zhang et al. 2024, "Plug-and-Play"): relative importance times activations.

score_ij = (|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖X_j‖₂^a, a = 0.5:
a weight matters when it is large relative to both its output row and its
input column, which protects whole channels from being emptied.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from autoprune.pruning.stats import ActivationStats

TINY = 1e-12  # an all-zero row or column must not divide by zero


@dataclass(frozen=True)
class RIAMetric:
    name: str = "ria"
    group: str = "row"
    needs_gram: bool = False
    needs_grad: bool = False
    exponent: float = 0.5

    def score(self, W: Tensor, X: ActivationStats) -> Tensor:
        a = W.abs()
        relative = a / (a.sum(dim=1, keepdim=True) + TINY) + a / (a.sum(dim=0, keepdim=True) + TINY)
        return relative * X.norm.reshape(1, -1).pow(self.exponent)


METRIC = RIAMetric()
