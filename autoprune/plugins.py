"""Plugin discovery through entry points.

Groups: `autoprune.prompts` (prompt sets), `autoprune.evaluators` (evaluators),
`autoprune.metrics` and `autoprune.allocators` (pruning plug-ins). Built-ins
register through the same mechanism in pyproject.toml. A plugin that fails to
load is reported, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from importlib.metadata import Distribution, EntryPoint, entry_points
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
    version: str = ""
    origin: str = ""     # where the distribution is installed from (folder, or source for editable installs)


def distribution_origin(dist: Optional[Distribution]) -> str:
    """The source folder of an editable/local install (PEP 610 direct_url.json), else its install location."""
    if dist is None:
        return ""
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "null")
    except (OSError, ValueError):
        direct = None
    if isinstance(direct, dict) and direct.get("url"):
        editable = direct.get("dir_info", {}).get("editable", False)
        return str(direct["url"]).removeprefix("file://") + (" (editable)" if editable else "")
    return str(Path(str(dist.locate_file(""))).resolve())


def load_entry_point(group: str, ep: EntryPoint) -> PluginInfo:
    dist = ep.dist.name if ep.dist is not None else "?"
    where = {"version": ep.dist.version if ep.dist is not None else "", "origin": distribution_origin(ep.dist)}
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not break the tool
        return PluginInfo(group, ep.name, ep.value, dist, False, f"{type(exc).__name__}: {exc}", **where)
    return PluginInfo(group, ep.name, ep.value, dist, True, obj=obj, **where)


def discover(group: str) -> list[PluginInfo]:
    """Every plugin registered under `group`, loaded (or with its load error)."""
    return [load_entry_point(group, ep) for ep in sorted(entry_points(group=group), key=lambda e: e.name)]


def registered_names(group: str) -> list[str]:
    """The names registered under `group`, without loading any (a flag is checked without importing torch)."""
    return sorted({ep.name for ep in entry_points(group=group)})


def loaded_plugins(group: str) -> dict[str, Any]:
    """name -> loaded object, skipping broken plugins."""
    return {p.name: p.obj for p in discover(group) if p.loaded}


def discover_all(groups: tuple[str, ...] = GROUPS) -> list[PluginInfo]:
    """Every plugin of every group (what `autoprune-agent plugins` lists)."""
    return [info for group in groups for info in discover(group)]
