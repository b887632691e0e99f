"""Per-layer statistics of a candidate's score distribution (mode "profile", for SDSA).

Torch only: runs inside the sandbox. Skewness (outlier heaviness) drives SDSA's
allocation; trusted code clamps and rescales whatever comes out of here.
"""

from __future__ import annotations

import torch

from autoprune.pruning.profile import block_profile, outlier_ratio, skewness

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
_MAX_QUANTILE_SAMPLES = 1 << 20


def score_profile(scores: torch.Tensor) -> dict[str, float]:
    """mean, std, skewness, outlier_ratio (OWL's: fraction > 5 × mean) and quantiles of one layer,
    with the trusted side's definitions (autoprune.pruning.profile)."""
    x = scores.detach().flatten().to(torch.float64)
    mean, std = x.mean(), x.std(unbiased=False)
    # torch.quantile refuses very large inputs: a strided sample keeps it exact enough for SDSA.
    step = max(1, x.numel() // _MAX_QUANTILE_SAMPLES)
    qs = torch.quantile(x[::step], torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
    return {"mean": mean.item(), "std": std.item(), "skewness": skewness(x),
            "outlier_ratio": outlier_ratio(x), "numel": x.numel(),
            **{f"q{int(q * 100):02d}": v for q, v in zip(QUANTILES, qs)}}


def blocks_profile(scores_by_block: dict[int, list[torch.Tensor]],
                   weights_by_block: dict[int, list[torch.Tensor]]) -> dict[str, dict[str, float]]:
    """`block_profile` per decoder block (what SDSA reads), keyed by the block index as text."""
    return {str(index): block_profile(scores_by_block[index], weights_by_block[index])
            for index in sorted(scores_by_block)}
