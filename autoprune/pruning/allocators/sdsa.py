"""SDSA (DESIGN §5, AutoPrune arXiv 2511.15390): skew-aware dynamic sparsity allocation.

Per block, the skewness of |W| (`source="weight"`, the default: the paper's
outlier measure) or of the metric's scores (`source="score"`, DESIGN §5: the
winning candidate's sandbox profile) says how heavy its outlier tail is;
heavier tails → lower sparsity. The skews are log-compressed, standardised,
and go through a temperature softmax (or a linear map) onto [S−λ, S+λ]; one
common shift with clipping makes the parameter-weighted mean exactly S.

What was wrong before (SDSA lost to uniform at 60–70 %): it read the Wanda-score
skew, untransformed. A block's skew is a third moment of ~10⁶ values and is
itself heavy-tailed: on SmolLM2-135M the score skew spans 10 … 1613 across the
30 blocks, the top two driven by single weights, so the standardised softmax
protected those two blocks and spread their cost over all the others. The log
tames that (`transform="none"` keeps the raw skew), but the score skew is still
the wrong signal there: chosen on validation, |W| skew beats uniform at 70 %
and score skew loses to it (benchmarks/results/allocation.md). λ, temperature,
source and mapping are chosen on validation windows
(`autoprune.pruning.allocators.tuning`), never on the test split.
"""

from __future__ import annotations

import torch

from autoprune.errors import BadInputError
from autoprune.pruning.allocators.exact_mean import bounds, meet_target

DEFAULT_LAMBDA = 0.08
DEFAULT_TEMPERATURE = 1.0
SOURCES = {"score": "skewness", "weight": "weight_skewness"}
TRANSFORMS = ("log", "none")
MAPPINGS = ("softmax", "linear")


def compress(skews: torch.Tensor, transform: str) -> torch.Tensor:
    """Signed log1p of the skews (order kept, tails tamed), or the skews as they are."""
    if transform == "log":
        return skews.sign() * skews.abs().log1p()
    if transform == "none":
        return skews
    raise BadInputError(f"sdsa transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")


def protection(skews: torch.Tensor, *, mapping: str, temperature: float) -> torch.Tensor:
    """How much each block is protected, in [0, 1]; monotone increasing in its skew.

    softmax: a high temperature tends to the linear map of the standardised skews,
    a low one protects only the most skewed blocks."""
    if mapping == "linear":
        return (skews - skews.min()) / (skews.max() - skews.min())
    if mapping != "softmax":
        raise BadInputError(f"sdsa mapping must be one of {', '.join(MAPPINGS)}, got {mapping!r}")
    if temperature <= 0:
        raise BadInputError(f"sdsa temperature must be > 0, got {temperature}")
    z = (skews - skews.mean()) / skews.std(unbiased=False)
    p = torch.softmax(z / temperature, dim=0)
    return (p - p.min()) / (p.max() - p.min())


def allocate(target: float, block_profiles, block_params, *, lam: float = DEFAULT_LAMBDA,
             temperature: float = DEFAULT_TEMPERATURE, mapping: str = "softmax",
             source: str = "weight", transform: str = "log", **_hyper) -> list[float]:
    if source not in SOURCES:
        raise BadInputError(f"sdsa source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not 0.0 <= lam < 1.0:
        raise BadInputError(f"sdsa lam (half-width of the sparsity band) must be in [0, 1), got {lam}")
    key = SOURCES[source]
    if not all(key in p for p in block_profiles):
        raise BadInputError(f"sdsa source {source!r} needs {key!r} in every block profile")
    skews = torch.tensor([float(p[key]) for p in block_profiles], dtype=torch.float64)
    skews = compress(skews, transform)
    if lam == 0.0 or len(skews) < 2 or float(skews.max() - skews.min()) <= 0:
        return [float(target)] * len(block_params)
    p = protection(skews, mapping=mapping, temperature=temperature)
    raw = (target + lam - 2 * lam * p).tolist()
    low, high = bounds(target, lam)
    return meet_target(raw, block_params, target, low, high)
