"""The allocations the finale chooses from, and the choice itself: on validation windows only.

Uniform, OWL (λ), SDSA on the log-compressed skew of |W| (mapping × λ; `sdsa_lambdas`) and ATP (β)
are the candidates (`final_allocations`). Each grid point's per-block sparsities come from the
dense model's block profiles (the same ones `prune --allocation` uses); the winner's code then
draws its masks at those sparsities in the sandbox, and trusted code scores them on the fitness
windows: every point at the tuning level, the best point of each allocator again at the top level,
and the lowest top-level perplexity is the chosen allocation. N:M patterns fix every layer's
sparsity, so there only uniform is considered. The test split is never read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from autoprune.pruning.allocators import allocate_sparsity
from autoprune.pruning.loop import block_param_counts, dense_block_profiles
from autoprune.pruning.metrics import get_metric

OWL_GRID = [{"lam": 0.08}, {"lam": 0.04}]
ATP_GRID = [{"beta": 0.0025}, {"beta": 0.005}, {"beta": 0.0075}]
# The linear map of the log |W| skew won the SDSA grid at 50, 60 and 70 % (benchmarks/results/allocation.md);
# each grid point costs a sandbox run of the winner, so the finale tunes λ on it alone.
SDSA_MAPPINGS = ({"mapping": "linear"},)


@dataclass
class Variant:
    """One allocation of the winner: per-block sparsities, its masks and what validation said of it."""

    name: str                                  # e.g. "uniform", "sdsa(lam=0.1, mapping=linear)"
    block_sparsity: list[float]
    masks: Optional[dict[str, torch.Tensor]] = None
    group: str = "row"
    validation_ppl: Optional[float] = None     # at the top fitness level (None: tuning level only)
    tuning_ppl: Optional[float] = None
    hyper: dict = field(default_factory=dict)
    allocation: str = ""

    def __post_init__(self) -> None:
        self.allocation = self.allocation or self.name.split("(")[0]


def grids(config) -> dict[str, list[dict]]:
    """Each allocation's hyper-parameter points (uniform has one, empty)."""
    sdsa = [{"source": "weight", "transform": "log", "lam": lam, **mapping}
            for mapping in SDSA_MAPPINGS for lam in config.sdsa_lambdas]
    return {"uniform": [{}], "owl": OWL_GRID, "sdsa": sdsa, "atp": ATP_GRID}


def point_name(allocation: str, hyper: dict) -> str:
    shown = {k: v for k, v in hyper.items() if k not in ("source", "transform", "temperature")}
    return allocation if not shown else allocation + "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float)
                                                                     else f"{k}={v}" for k, v in shown.items()) + ")"


def allocation_points(config, model, stats, *, structured: bool, fixed_sparsity: float) -> list[Variant]:
    """Every grid point of every allocation the config asks for (only uniform for N:M patterns)."""
    params = block_param_counts(model)
    if structured:
        return [Variant("uniform", [fixed_sparsity] * len(params))]
    names = [a for a in config.final_allocations if a != "uniform"]
    profiles = dense_block_profiles(model, stats, get_metric("wanda")) if names else []
    points = [Variant("uniform", [config.sparsity] * len(params))] if "uniform" in config.final_allocations else []
    table = grids(config)
    for allocation in names:
        for hyper in table[allocation]:
            ratios = allocate_sparsity(allocation, config.sparsity, profiles, params, **hyper)
            points.append(Variant(point_name(allocation, hyper), ratios, hyper=dict(hyper), allocation=allocation))
    return points


def choose(points: list[Variant], draw_masks: Callable[[Variant], None], score: Callable[[Variant, int], float],
           *, tuning_level: int, top_level: int) -> tuple[Variant, list[Variant]]:
    """(chosen variant, the best point of each allocation). `draw_masks` fills a variant's masks (the
    sandbox); `score(variant, level)` is its validation perplexity at a fitness level."""
    best: dict[str, Variant] = {}
    for point in points:
        draw_masks(point)
        point.tuning_ppl = score(point, tuning_level)
        current = best.get(point.allocation)
        if current is None or point.tuning_ppl < current.tuning_ppl:
            if current is not None:
                current.masks = None           # masks are as large as the model: keep only the leaders'
            best[point.allocation] = point
        else:
            point.masks = None
    finalists = list(best.values())
    for variant in finalists:
        variant.validation_ppl = (variant.tuning_ppl if tuning_level == top_level
                                  else score(variant, top_level))
    return min(finalists, key=lambda v: v.validation_ppl), finalists
