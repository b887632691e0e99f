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

BUILTIN_MODULES = {"uniform": "uniform", "owl": "owl", "sdsa": "sdsa"}


def allocator_names() -> list[str]:
    return list(BUILTIN_MODULES)


def allocate_sparsity(name: str, target: float, block_profiles: Sequence[dict],
                      block_params: Sequence[int], **hyper) -> list[float]:
    """Per-block sparsities for allocator `name`; parameter-weighted mean == target."""
    module = BUILTIN_MODULES.get(name)
    if module is None:
        raise BadInputError(f"unknown allocation {name!r} (known: {', '.join(BUILTIN_MODULES)})")
    if not 0.0 < target < 1.0:
        raise BadInputError(f"sparsity must be in (0, 1), got {target}")
    if len(block_params) == 0 or (name != "uniform" and len(block_profiles) != len(block_params)):
        raise BadInputError(f"{name}: need one profile and one parameter count per block")
    allocate = importlib.import_module(f"{__name__}.{module}").allocate
    return allocate(target, block_profiles, block_params, **hyper)


def needs_profiles(name: str) -> bool:
    return name != "uniform"
