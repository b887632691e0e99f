"""Importance metrics: one small file per metric, all behind one registry.

A metric turns one linear layer's dense weight W (out, in) and its calibration
statistics into scores (higher = keep). The pruning loop never changes when a
metric is added: drop a file here that defines a `METRIC` and list it in
`BUILTIN_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import Literal, Protocol, runtime_checkable

from torch import Tensor

from autoprune.errors import BadInputError
from autoprune.pruning.stats import ActivationStats

BUILTIN_MODULES = {
    "magnitude": "magnitude",
    "wanda": "wanda",
    "ria": "ria",
    "pruner-zero": "pruner_zero",
}


@runtime_checkable
class Metric(Protocol):
    name: str
    group: Literal["row", "layer"]   # how scores become masks
    needs_gram: bool                 # ActivationStats.gram must be filled
    needs_grad: bool                 # ActivationStats.grad must be filled

    def score(self, W: Tensor, X: ActivationStats) -> Tensor: ...


def metric_names() -> list[str]:
    return list(BUILTIN_MODULES)


def get_metric(name: str) -> Metric:
    """The built-in metric called `name` ("magnitude", "wanda", "ria", "pruner-zero")."""
    module = BUILTIN_MODULES.get(name)
    if module is None:
        raise BadInputError(f"unknown metric {name!r} (known: {', '.join(BUILTIN_MODULES)})")
    return importlib.import_module(f"{__name__}.{module}").METRIC


from autoprune.pruning.metrics.candidate import CandidateMetric  # noqa: E402  (re-export)

__all__ = ["Metric", "get_metric", "metric_names", "CandidateMetric"]
