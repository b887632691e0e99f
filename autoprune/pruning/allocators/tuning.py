"""Choose an allocator's hyper-parameters on validation data (never on test).

`tune` scores every point of a small grid with a caller-given proxy and keeps
the lowest; `validation_proxy` is the standard proxy: prune the model with the
allocation (one-shot by default: cheap, dense statistics shared by every
point), take the perplexity on a few validation windows, restore the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from autoprune.errors import BadInputError

# Small grids (≈4 points each): the first point of each is its module's default.
DEFAULT_GRIDS: dict[str, list[dict]] = {
    "uniform": [{}],
    "owl": [{"lam": 0.08}, {"lam": 0.04}, {"lam": 0.12}, {"lam": 0.16}],
    "sdsa": [{"source": source, "mapping": mapping, "lam": lam, **({"temperature": 1.0} if mapping == "softmax" else {})}
             for source in ("weight", "score") for mapping, lam in (("softmax", 0.08), ("linear", 0.05),
                                                                     ("linear", 0.1))],
    "atp": [{"beta": beta} for beta in (0.0025, 0.005, 0.0075, 0.01)],
}

Proxy = Callable[[str, dict], float]


@dataclass
class Tuned:
    """The best point of one allocator's grid and every point's proxy score (lower is better)."""

    allocation: str
    best: dict
    best_score: float
    scores: list[dict] = field(default_factory=list)   # [{"hyper": {...}, "score": float}, ...]

    def as_dict(self) -> dict:
        return {"allocation": self.allocation, "best": self.best, "best_score": self.best_score,
                "scores": self.scores}


def tune(allocation: str, grid: Sequence[dict], proxy: Proxy) -> Tuned:
    """Score each point with `proxy(allocation, hyper)`; the lowest finite score wins (first on ties)."""
    if not grid:
        raise BadInputError(f"{allocation}: the hyper-parameter grid is empty")
    scores = [{"hyper": dict(hyper), "score": float(proxy(allocation, dict(hyper)))} for hyper in grid]
    finite = [s for s in scores if math.isfinite(s["score"])]
    if not finite:
        raise BadInputError(f"{allocation}: every grid point scored inf or nan on the proxy")
    best = min(finite, key=lambda s: s["score"])
    return Tuned(allocation, best["hyper"], best["score"], scores)


def tune_all(proxy: Proxy, grids: Optional[Mapping[str, Sequence[dict]]] = None) -> dict[str, Tuned]:
    """`tune` every allocator of `grids` (default: DEFAULT_GRIDS)."""
    return {name: tune(name, grid, proxy) for name, grid in (grids or DEFAULT_GRIDS).items()}


def validation_proxy(model, calibration, validation, *, method, sparsity: float, score: Callable,
                     dense_stats=None, mode: str = "one-shot") -> Proxy:
    """proxy(allocation, hyper) = score(model, validation) of `model` pruned with that allocation
    (the caller passes the trusted evaluator, e.g. `autoprune.evaluators.perplexity.perplexity`:
    the pruning core does not import the evaluators); the dense weights are restored after each
    call. `validation` must come from the validation split (e.g. `autoprune.data.fitness_windows`)."""
    from autoprune.pruning.apply import restore, snapshot_weights
    from autoprune.pruning.calibration import target_linears
    from autoprune.pruning.loop import prune_model

    dense = snapshot_weights(model, target_linears(model))

    def proxy(allocation: str, hyper: dict) -> float:
        try:
            prune_model(model, calibration, method=method, sparsity=sparsity, allocation=allocation,
                        allocation_hyper=hyper, mode=mode, dense_stats=dense_stats, progress=False)
            return score(model, validation)
        finally:
            restore(model, dense)

    return proxy
