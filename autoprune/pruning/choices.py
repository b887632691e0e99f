"""What `prune`'s flags may name: the methods and the reconstructions, known without importing torch.

The CLI checks a flag against these names at once; an implementation is imported
only when a job uses it (metrics: `autoprune.pruning.metrics`; layer pruners:
below; reconstructions: `autoprune.pruning.reconstruct`).
"""

from __future__ import annotations

import importlib

from autoprune.errors import BadInputError
from autoprune.pruning.metrics import get_metric, metric_names

# The built-in layer pruners (mask and weight update together), by `prune --method` name.
LAYER_PRUNERS = {"sparsegpt": ("autoprune.pruning.sparsegpt", "SparseGPTPruner"),
                 "alps": ("autoprune.pruning.alps", "ALPSPruner")}
# Weights for a fixed mask (`prune --reconstruct`); autoprune.pruning.reconstruct.RECONSTRUCTIONS implements each.
RECONSTRUCTION_NAMES = ("none", "obs", "exact")
# How `search-rates --importance` ranks channels and KV groups (autoprune.pruning.structured_importance).
IMPORTANCE_KINDS = ("activation", "taylor")


def method_names() -> list[str]:
    return [*metric_names(), *LAYER_PRUNERS]


def builtin_method(name: str):
    """A new layer pruner or the metric called `name`."""
    if name in LAYER_PRUNERS:
        module, cls = LAYER_PRUNERS[name]
        return getattr(importlib.import_module(module), cls)()
    return get_metric(name)


def reconstruction_name(value) -> str:
    """The registered name for `value`: a name, or a bool (True = "obs", the historical flag)."""
    if isinstance(value, bool) or value is None:
        return "obs" if value else "none"
    if value not in RECONSTRUCTION_NAMES:
        raise BadInputError(f"unknown reconstruction {value!r} (known: {', '.join(RECONSTRUCTION_NAMES)})")
    return value
