"""Importance metrics: one small file per metric, all behind one registry.

A metric turns one linear layer's dense weight W (out, in) and its calibration
statistics into scores (higher = keep). The pruning loop never changes when a
metric is added: drop a file here that defines a `METRIC` and list it in
`BUILTIN_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from autoprune.errors import BadInputError
from autoprune.plugins import registered_names

if TYPE_CHECKING:        # names are checked without importing torch (the CLI answers a bad flag at once)
    from torch import Tensor

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


def plugin_metrics() -> dict[str, object]:
    """Metrics other packages register under the entry-point group `autoprune.metrics`."""
    from autoprune.plugins import loaded_plugins

    return {name: obj for name, obj in loaded_plugins("autoprune.metrics").items() if name not in BUILTIN_MODULES}


def metric_names() -> list[str]:
    """Built-in and registered metric names; plugins are not loaded (a broken one fails in `get_metric`)."""
    return [*BUILTIN_MODULES, *(n for n in registered_names("autoprune.metrics") if n not in BUILTIN_MODULES)]


def get_metric(name: str) -> Metric:
    """The metric called `name`: a built-in ("magnitude", "wanda", "ria", "pruner-zero") or a plugin's."""
    module = BUILTIN_MODULES.get(name)
    if module is not None:
        return importlib.import_module(f"{__name__}.{module}").METRIC
    plugin = plugin_metrics().get(name)
    if plugin is None:
        raise BadInputError(f"unknown or broken metric {name!r} (known: {', '.join(metric_names())}; "
                            "see `autoprune-agent plugins`)")
    metric = plugin() if isinstance(plugin, type) else plugin
    if not isinstance(metric, Metric):
        raise BadInputError(f"plugin metric {name!r} lacks name/group/needs_gram/needs_grad/score (see docs/plugins.md)")
    return metric


__all__ = ["Metric", "get_metric", "metric_names"]
