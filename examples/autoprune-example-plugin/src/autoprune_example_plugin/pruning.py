"""A pruning metric and a layer-wise allocator, the two pruning extension points.

* `OutlierAwareWanda` (entry-point group `autoprune.metrics`): Wanda's |W|·‖X‖₂ with the
  input channel's peak magnitude mixed in, so channels with rare large activations are
  protected. It follows `autoprune.pruning.metrics.Metric`: name, group, needs_gram,
  needs_grad, score(W, X).
* `depth_ramp` (entry-point group `autoprune.allocators`): prune early blocks less and late
  blocks more, linearly, then let the core's `meet_target` make the parameter-weighted mean
  exactly the target (the registry checks it).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from autoprune.pruning.allocators.exact_mean import meet_target
from autoprune.pruning.stats import ActivationStats


class OutlierAwareWanda:
    name = "outlier-wanda"
    group = "row"
    needs_gram = False
    needs_grad = False

    def __init__(self, alpha: float = 0.5):
        self.alpha = alpha

    def score(self, W: Tensor, X: ActivationStats) -> Tensor:
        return W.abs() * (X.norm + self.alpha * X.max_abs).unsqueeze(0)


def depth_ramp(target: float, block_profiles: Sequence[dict], block_params: Sequence[int],
               spread: float = 0.1, **_hyper) -> list[float]:
    blocks = len(block_params)
    raw = [target + spread * (2 * i / max(blocks - 1, 1) - 1) for i in range(blocks)]
    return meet_target(raw, block_params, target, max(target - spread, 0.0), min(target + spread, 0.99))
