"""The rate-search StateGraph: nodes bound to their services (traced by the runtime), routes between
them; the Budget decides when the search stops."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from autoprune.agent.rates.nodes import NODES
from autoprune.agent.rates.services import RatesServices
from autoprune.agent.rates.state import RatesState
from autoprune.agent.runtime.nodes import add_traced_nodes


def after_seeding(state: RatesState, services: RatesServices) -> str:
    return "propose" if services.budget.can_submit(state) else "finalize"


def after_validate(state: RatesState, services: RatesServices) -> str:
    if state.get("pending") and not state.get("error"):
        return "evaluate"
    return "fallback" if state.get("attempts", 0) > services.max_repairs else "propose"


def build_graph(services: RatesServices, checkpointer=None):
    graph = StateGraph(RatesState)
    add_traced_nodes(graph, NODES, services, generation=lambda st: int(st.get("evaluated", 0)))
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
