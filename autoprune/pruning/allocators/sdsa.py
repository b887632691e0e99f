"""SDSA (DESIGN §5): skew-aware dynamic sparsity allocation.

Per block, the skewness of the metric's score distribution (or of |W|) measures
how heavy its outlier tail is; heavier tails → lower sparsity. Skews go through
a temperature softmax (or a linear map) onto [S−λ, S+λ], then one common shift
with clipping makes the parameter-weighted mean exactly S. Hyper-parameters
(λ, temperature, source) are chosen on validation data by the caller.
"""

from __future__ import annotations

import torch

from autoprune.errors import BadInputError
from autoprune.pruning.allocators.exact_mean import bounds, meet_target

DEFAULT_LAMBDA = 0.08
DEFAULT_TEMPERATURE = 1.0
SOURCES = {"score": "skewness", "weight": "weight_skewness"}


def protection(skews: torch.Tensor, *, mapping: str, temperature: float) -> torch.Tensor:
    """How much each block is protected, in [0, 1]; monotone increasing in its skew."""
    spread = skews.max() - skews.min()
    z = (skews - skews.mean()) / skews.std(unbiased=False)
    if mapping == "linear":
        p = (skews - skews.min()) / spread
    elif mapping == "softmax":
        if temperature <= 0:
            raise BadInputError(f"sdsa temperature must be > 0, got {temperature}")
        p = torch.softmax(z / temperature, dim=0)
        p = (p - p.min()) / (p.max() - p.min())
    else:
        raise BadInputError(f"sdsa mapping must be 'softmax' or 'linear', got {mapping!r}")
    return p


def allocate(target: float, block_profiles, block_params, *, lam: float = DEFAULT_LAMBDA,
             temperature: float = DEFAULT_TEMPERATURE, mapping: str = "softmax",
             source: str = "score", **_hyper) -> list[float]:
    if source not in SOURCES:
        raise BadInputError(f"sdsa source must be one of {', '.join(SOURCES)}, got {source!r}")
    skews = torch.tensor([float(p[SOURCES[source]]) for p in block_profiles], dtype=torch.float64)
    if len(skews) < 2 or float(skews.max() - skews.min()) <= 0:
        return [float(target)] * len(block_params)
    p = protection(skews, mapping=mapping, temperature=temperature)
    raw = (target + lam - 2 * lam * p).tolist()
    low, high = bounds(target, lam)
    return meet_target(raw, block_params, target, low, high)
