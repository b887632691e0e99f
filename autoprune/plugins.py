"""Plugin discovery through entry points.

Groups: `autoprune.prompts` (prompt sets), `autoprune.evaluators` (evaluators),
`autoprune.metrics` and `autoprune.allocators` (pruning plug-ins). Built-ins
register through the same mechanism in pyproject.toml. A plugin that fails to
load is reported, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Optional

GROUPS = ("autoprune.prompts", "autoprune.evaluators", "autoprune.metrics", "autoprune.allocators")


@dataclass
class PluginInfo:
    group: str
    name: str
    target: str          # "module:attr"
    distribution: str    # which installed package provides it
    loaded: bool
    error: Optional[str] = None
    obj: Any = None


def load_entry_point(group: str, ep: EntryPoint) -> PluginInfo:
    dist = ep.dist.name if ep.dist is not None else "?"
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not break the tool
        return PluginInfo(group, ep.name, ep.value, dist, False, f"{type(exc).__name__}: {exc}")
    return PluginInfo(group, ep.name, ep.value, dist, True, obj=obj)


def discover(group: str) -> list[PluginInfo]:
    """Every plugin registered under `group`, loaded (or with its load error)."""
    return [load_entry_point(group, ep) for ep in sorted(entry_points(group=group), key=lambda e: e.name)]


def loaded_plugins(group: str) -> dict[str, Any]:
    """name -> loaded object, skipping broken plugins."""
    return {p.name: p.obj for p in discover(group) if p.loaded}
