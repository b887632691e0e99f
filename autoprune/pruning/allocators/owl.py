"""OWL (Yin et al. 2024): blocks with more outliers keep more weights.

Outlier ratio D_l = fraction of the block's Wanda scores above M × their mean.
The ratios are mapped linearly onto a band of width 2λ — the block with the most
outliers gets S−λ, the one with the fewest S+λ — then shifted so the
parameter-weighted mean is exactly S.
"""

from __future__ import annotations

from autoprune.pruning.allocators.exact_mean import bounds, meet_target

DEFAULT_LAMBDA = 0.08


def allocate(target: float, block_profiles, block_params, *, lam: float = DEFAULT_LAMBDA,
             profile_key: str = "outlier_ratio", **_hyper) -> list[float]:
    ratios = [float(p[profile_key]) for p in block_profiles]
    low, high = bounds(target, lam)
    spread = max(ratios) - min(ratios)
    if spread <= 0:
        return [float(target)] * len(ratios)
    raw = [target + lam - 2 * lam * (r - min(ratios)) / spread for r in ratios]
    return meet_target(raw, block_params, target, low, high)
