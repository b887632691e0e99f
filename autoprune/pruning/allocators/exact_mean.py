"""Bring per-block ratios to an exact parameter-weighted mean while staying in bounds."""

from __future__ import annotations

from typing import Sequence

import torch

TOLERANCE = 1e-12


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    v = torch.tensor(values, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    return float((v * w).sum() / w.sum())


def meet_target(raw: Sequence[float], weights: Sequence[int], target: float,
                low: float, high: float, *, iterations: int = 200) -> list[float]:
    """Shift `raw` by one constant and clip to [low, high] so the weighted mean is `target`.

    A common shift keeps the order of the blocks (a more protected block never
    ends up sparser). The clipped, shifted mean is monotone in the shift, so
    bisection finds it; the remaining rounding error goes to unclipped blocks.
    """
    if not low - TOLERANCE <= target <= high + TOLERANCE:
        raise ValueError(f"target {target} outside the bounds [{low}, {high}]")
    x = torch.tensor(raw, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    mean_at = lambda c: float((w * (x + c).clamp(low, high)).sum())  # noqa: E731
    lo_c, hi_c = low - float(x.max()), high - float(x.min())
    for _ in range(iterations):
        mid = (lo_c + hi_c) / 2
        lo_c, hi_c = (mid, hi_c) if mean_at(mid) < target else (lo_c, mid)
    out = (x + (lo_c + hi_c) / 2).clamp(low, high)
    free = (out > low) & (out < high)
    if free.any():
        out[free] += (target - float((w * out).sum())) / float(w[free].sum())
    return [float(v) for v in out.clamp(low, high)]


def bounds(target: float, lam: float) -> tuple[float, float]:
    """[S−λ, S+λ] kept inside [0, 1)."""
    return max(target - lam, 0.0), min(target + lam, 0.999)
