"""The rate-search StateGraph: nodes bound to their services, routes between them."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from autoprune.agent.rates.nodes import NODES
from autoprune.agent.rates.services import RatesServices
from autoprune.agent.rates.state import RatesState


def traced(name: str, node, services: RatesServices):
    def run(state: RatesState) -> dict:
        services.trace.emit("node_entered", node=name, generation=state.get("evaluated", 0))
        update = node(state, services)
        services.trace.emit("node_left", node=name, generation=update.get("evaluated", state.get("evaluated", 0)))
        return update

    return run


def after_seeding(state: RatesState, services: RatesServices) -> str:
    return "propose" if state.get("evaluated", 0) < services.budget else "finalize"


def after_validate(state: RatesState, services: RatesServices) -> str:
    if state.get("pending") and not state.get("error"):
        return "evaluate"
    return "fallback" if state.get("attempts", 0) > services.max_repairs else "propose"


def build_graph(services: RatesServices, checkpointer=None):
    graph = StateGraph(RatesState)
    for name, node in NODES.items():
        graph.add_node(name, traced(name, node, services))
    graph.add_edge(START, "seed_population")
    graph.add_conditional_edges("seed_population", lambda st: after_seeding(st, services), ["propose", "finalize"])
    graph.add_edge("propose", "validate")
    graph.add_conditional_edges("validate", lambda st: after_validate(st, services),
                                ["evaluate", "fallback", "propose"])
    graph.add_edge("fallback", "evaluate")
    graph.add_edge("evaluate", "select")
    graph.add_conditional_edges("select", lambda st: after_seeding(st, services), ["propose", "finalize"])
    graph.add_edge("finalize", END)
    return graph.compile(checkpointer=checkpointer)
