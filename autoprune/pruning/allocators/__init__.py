"""Layer-wise sparsity allocators: per-block profiles → per-block sparsities.

Every allocator returns ratios whose parameter-weighted mean equals the target
exactly (1e-9) and that stay inside their bounds; `meet_target` does that last
step for all of them. Adding an allocator = one file defining `allocate(...)`
plus a line in `BUILTIN_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import Sequence

from autoprune.errors import BadInputError

BUILTIN_MODULES = {"uniform": "uniform", "owl": "owl", "sdsa": "sdsa", "atp": "atp"}
# Allocators that read only the block count and sizes, never the dense profiles.
PROFILE_FREE = frozenset({"uniform", "atp"})


def plugin_allocators() -> dict[str, object]:
    """Allocators (an `allocate(target, profiles, params, **hyper)` callable) registered under the
    entry-point group `autoprune.allocators` by other packages."""
    from autoprune.plugins import loaded_plugins

    return {name: fn for name, fn in loaded_plugins("autoprune.allocators").items()
            if name not in BUILTIN_MODULES and callable(fn)}


def allocator_names() -> list[str]:
    """Built-in and registered allocator names; plugins are not loaded (the CLI checks a flag at once)."""
    from autoprune.plugins import registered_names

    return [*BUILTIN_MODULES, *(n for n in registered_names("autoprune.allocators") if n not in BUILTIN_MODULES)]


def allocate_sparsity(name: str, target: float, block_profiles: Sequence[dict],
                      block_params: Sequence[int], **hyper) -> list[float]:
    """Per-block sparsities for allocator `name`; parameter-weighted mean == target (checked for plugins)."""
    module = BUILTIN_MODULES.get(name)
    allocate = (importlib.import_module(f"{__name__}.{module}").allocate if module is not None
                else plugin_allocators().get(name))
    if allocate is None:
        raise BadInputError(f"unknown allocation {name!r} (known: {', '.join(allocator_names())})")
    if not 0.0 < target < 1.0:
        raise BadInputError(f"sparsity must be in (0, 1), got {target}")
    if len(block_params) == 0 or (needs_profiles(name) and len(block_profiles) != len(block_params)):
        raise BadInputError(f"{name}: need one profile and one parameter count per block")
    ratios = [float(r) for r in allocate(target, block_profiles, block_params, **hyper)]
    if module is None:
        check_plugin_ratios(name, target, ratios, block_params)
    return ratios


def check_plugin_ratios(name: str, target: float, ratios: list[float], block_params: Sequence[int]) -> None:
    """A plugin's ratios must be one per block, inside [0, 1), with the exact parameter-weighted mean."""
    if len(ratios) != len(block_params) or not all(0.0 <= r < 1.0 for r in ratios):
        raise BadInputError(f"allocator plugin {name!r} returned {len(ratios)} ratios outside [0, 1) "
                            f"or not one per block ({len(block_params)} blocks)")
    mean = sum(r * p for r, p in zip(ratios, block_params)) / sum(block_params)
    if abs(mean - target) > 1e-6:
        raise BadInputError(f"allocator plugin {name!r} missed the target: parameter-weighted mean "
                            f"{mean:.6f} != {target} (use autoprune.pruning.allocators.exact_mean.meet_target)")


def needs_profiles(name: str) -> bool:
    return name not in PROFILE_FREE
