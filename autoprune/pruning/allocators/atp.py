"""ATP (Huang et al. 2025, arXiv 2502.14770): sparsity grows linearly with depth.

Block l of L gets S + β·(l − (L−1)/2): an arithmetic progression with common
difference β ≥ 0 centred on the target, so early blocks (whose reconstruction
error every later block amplifies) keep more weights. One hyper-parameter, β,
chosen on validation data; β = 0 is uniform. Clipping to [0, 0.999] and one
common shift make the parameter-weighted mean exactly S (the order is kept, so
the ratios stay non-decreasing in depth).
"""

from __future__ import annotations

from autoprune.errors import BadInputError
from autoprune.pruning.allocators.exact_mean import meet_target

DEFAULT_BETA = 0.005
HIGHEST = 0.999


def progression(target: float, blocks: int, beta: float) -> list[float]:
    """The unclipped progression: mean `target`, step `beta`."""
    centre = (blocks - 1) / 2
    return [target + beta * (index - centre) for index in range(blocks)]


def allocate(target: float, block_profiles, block_params, *, beta: float = DEFAULT_BETA, **_hyper) -> list[float]:
    if not 0.0 <= beta < 1.0:
        raise BadInputError(f"atp beta (the step between consecutive blocks) must be in [0, 1), got {beta}")
    if beta == 0.0 or len(block_params) < 2:
        return [float(target)] * len(block_params)
    return meet_target(progression(target, len(block_params), beta), block_params, target, 0.0, HIGHEST)
