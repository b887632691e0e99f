"""Per-block profiles that layer-wise sparsity allocators read (OWL, SDSA).

Torch only: the sandbox worker imports this module to compute a candidate's
profile (mode "profile") with the same definitions the trusted side uses.
"""

from __future__ import annotations

from typing import Iterable

import torch

OWL_M = 5.0


def flat_scores(scores: Iterable[torch.Tensor]) -> torch.Tensor:
    """All score tensors of one block as one float64 vector."""
    return torch.cat([s.detach().reshape(-1).to(torch.float64) for s in scores])


def outlier_ratio(scores: Iterable[torch.Tensor] | torch.Tensor, m: float = OWL_M) -> float:
    """OWL's layer outlier ratio: fraction of scores above `m` times their mean."""
    x = scores if isinstance(scores, torch.Tensor) else flat_scores(scores)
    x = x.reshape(-1).to(torch.float64)
    return float((x > m * x.mean()).to(torch.float64).mean())


def skewness(scores: Iterable[torch.Tensor] | torch.Tensor) -> float:
    """Sample skewness E[(x-μ)³]/σ³ (0 for a constant tensor): heavier right tail → larger."""
    x = scores if isinstance(scores, torch.Tensor) else flat_scores(scores)
    x = x.reshape(-1).to(torch.float64)
    centred = x - x.mean()
    std = centred.pow(2).mean().sqrt()
    if std <= 0:
        return 0.0
    return float(centred.pow(3).mean() / std.pow(3))


def block_profile(scores: Iterable[torch.Tensor], weights: Iterable[torch.Tensor], *,
                  m: float = OWL_M) -> dict[str, float]:
    """Every statistic an allocator may read for one block.

    `scores` are the metric's scores of the block's linears, `weights` the dense
    weights: SDSA can use the skew of either (`weight_skewness`).
    """
    s = flat_scores(scores)
    w = flat_scores(w.abs() for w in weights)
    return {"outlier_ratio": outlier_ratio(s, m), "skewness": skewness(s),
            "weight_skewness": skewness(w), "weight_outlier_ratio": outlier_ratio(w, m)}
