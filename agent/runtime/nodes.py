"""The node wrapper every mode's graph uses: bind the services, trace entry and exit with timing."""

from __future__ import annotations

import functools
import time
from typing import Callable


def generation_of(state: dict) -> int:
    return int(state.get("generation", 0))


def traced(name: str, node: Callable, services, generation: Callable[[dict], int] = generation_of) -> Callable:
    """`node(state, services)` as a graph node: node_entered / node_left (generation, seconds) in
    `services.trace`; `services.on_update` (the live view, when there is one) hears each start."""

    @functools.wraps(node)
    def run(state: dict) -> dict:
        services.trace.emit("node_entered", node=name, generation=generation(state))
        hook = getattr(services, "on_update", None)
        if hook is not None:
            hook(name, {})
        started = time.perf_counter()
        update = node(state, services)
        services.trace.emit("node_left", node=name, generation=generation({**state, **update}),
                            seconds=round(time.perf_counter() - started, 3))
        return update

    return run


def add_traced_nodes(graph, nodes: dict[str, Callable], services,
                     generation: Callable[[dict], int] = generation_of) -> None:
    for name, node in nodes.items():
        graph.add_node(name, traced(name, node, services, generation))
