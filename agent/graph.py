"""The GCoT graph: nodes, edges and the routing decisions between them.

    START -> verify (generation-0 seeds) -> evaluate -> tournament -> analyse
    analyse -> hypothesise -> write_code -> verify -> evaluate -> tournament -> reflect
    write_code --parallel runs, batch not full--> write_code (the next candidate of the batch)
    verify --failure, repairs left--> write_code (with the exact error)
    tournament --promotions--> evaluate (successive halving to higher fidelity)
    reflect -> hypothesise, until the budget is spent -> finalize -> END

With `--pipeline-depth` > 0 (agent/pipeline.py) verify leaves the newest candidates evaluating in
the background and the graph goes on to the next hypothesis; their verdicts are recorded at the
next verify visit, and reflect judges the oldest generation whose candidates are all recorded
(`reflect_generation`), so it may lag the hypotheses by up to the depth. A route that needs
results nobody collected yet (reflect, the finale) goes through verify first, which then waits.

Each node is a function `(state, services) -> partial update`; `build_graph`
binds the services and wraps every node so it is traced (agent/runtime/nodes.py).
Every route that may end the search asks the Budget; `finalize` records its stop reason.
"""

from __future__ import annotations

import functools
from typing import Callable

from langgraph.graph import END, START, StateGraph

from autoprune.agent.nodes.analyse import analyse
from autoprune.agent.nodes.evaluate import evaluate
from autoprune.agent.nodes.finalize import finalize
from autoprune.agent.nodes.hypothesise import hypothesise
from autoprune.agent.nodes.reflect import reflect
from autoprune.agent.nodes.tournament import tournament
from autoprune.agent.nodes.verify import verify
from autoprune.agent.nodes.write_code import write_code
from autoprune.agent.runtime.nodes import add_traced_nodes
from autoprune.agent.services import AgentServices
from autoprune.agent.executors import resident_lock
from autoprune.agent.state import AgentState, reflect_generation, unsettled


def hypothesise_open(state: AgentState, services: AgentServices) -> dict:
    """hypothesise, keeping the hypothesis by generation until reflect has judged it."""
    update = hypothesise(state, services)
    open_hypotheses = {**(state.get("open_hypotheses") or {}), str(update["generation"]): update["hypothesis"]}
    return {**update, "open_hypotheses": open_hypotheses}


def reflect_settled(state: AgentState, services: AgentServices) -> dict:
    """reflect on the oldest unjudged generation (the current one unless the pipeline lets it lag),
    as reflect sees a generation: its number and its hypothesis."""
    generation = reflect_generation(state)
    open_hypotheses = dict(state.get("open_hypotheses") or {})
    hypothesis = open_hypotheses.pop(str(generation), None) or state.get("hypothesis")
    update = reflect({**state, "generation": generation, "hypothesis": hypothesis}, services)
    return {**update, "reflected": generation, "open_hypotheses": open_hypotheses}


def on_resident_model(node: Callable) -> Callable:
    """`node`, holding the resident model while it measures (the pipeline's thread masks it too)."""
    @functools.wraps(node)
    def run(state: AgentState, services: AgentServices) -> dict:
        with resident_lock(services.fitness.model):
            return node(state, services)

    return run


NODES: dict[str, Callable] = {
    "analyse": analyse, "hypothesise": hypothesise_open, "write_code": write_code, "verify": verify,
    "evaluate": on_resident_model(evaluate), "tournament": tournament, "reflect": reflect_settled,
    "finalize": on_resident_model(finalize),
}


def can_repair(state: AgentState, services: AgentServices) -> bool:
    return (bool(state.get("last_error")) and int(state.get("repairs", 0)) <= services.config.max_repairs
            and services.budget.can_submit(state))


def after_write_code(state: AgentState, services: AgentServices) -> str:
    queue = state.get("queue") or []
    if queue and len(queue) < services.config.batch_size and room_for_another(state, services):
        return "write_code"         # parallel runs: fill the batch before the workers start
    if queue:
        return "verify"
    return "write_code" if can_repair(state, services) else reflect_or_collect(state)


def reflect_or_collect(state: AgentState) -> str:
    """reflect, once the generation it judges has nothing in flight; verify (to wait) before."""
    return "verify" if unsettled(state, reflect_generation(state)) else "reflect"


def reflect_or_write_on(state: AgentState, services: AgentServices) -> str:
    """reflect when the judged generation is settled; else, while the budget lasts, the next
    hypothesis (its candidates evaluate meanwhile); else verify, to wait for them."""
    if not unsettled(state, reflect_generation(state)):
        return "reflect"
    return "hypothesise" if services.budget.can_submit(state) else "verify"


def room_for_another(state: AgentState, services: AgentServices) -> bool:
    """The budget covers the queued candidates plus one more, and the LLM caps allow a call."""
    failures_left = int(state.get("repairs", 0)) <= services.config.max_repairs
    return failures_left and services.budget.can_send(state, already_sent=len(state.get("queue") or []))


def after_verify(state: AgentState, services: AgentServices) -> str:
    if state.get("queue"):
        return "verify"
    if state.get("pending_evals"):
        return "evaluate"
    if state.get("phase") == "seeding":
        return "tournament"
    return "write_code" if can_repair(state, services) else reflect_or_write_on(state, services)


def after_tournament(state: AgentState, services: AgentServices) -> str:
    if state.get("pending_evals"):
        return "evaluate"
    if state.get("phase") == "seeding":
        return "analyse" if services.budget.can_submit(state) else "finalize"
    return reflect_or_write_on(state, services)


def next_or_finish(state: AgentState, services: AgentServices) -> str:
    """Another settled generation to judge, the next hypothesis, the last results to wait for, or the
    finale (which only ever sees recorded results)."""
    generation = reflect_generation(state)
    if generation <= int(state.get("generation", 0)) and not unsettled(state, generation):
        return "reflect"
    if services.budget.can_submit(state):
        return "hypothesise"
    return "verify" if state.get("in_flight") or state.get("queue") else "finalize"


def build_graph(services: AgentServices, checkpointer=None):
    """The compiled graph, with `services` bound to every node."""
    graph = StateGraph(AgentState)
    add_traced_nodes(graph, NODES, services)
    bind = lambda route: functools.partial(route, services=services)  # noqa: E731
    graph.add_edge(START, "verify")
    graph.add_edge("analyse", "hypothesise")
    graph.add_edge("hypothesise", "write_code")
    graph.add_conditional_edges("write_code", bind(after_write_code), ["verify", "write_code", "reflect"])
    graph.add_conditional_edges("verify", bind(after_verify),
                                ["verify", "evaluate", "tournament", "write_code", "reflect", "hypothesise"])
    graph.add_edge("evaluate", "tournament")
    graph.add_conditional_edges("tournament", bind(after_tournament),
                                ["evaluate", "analyse", "reflect", "hypothesise", "verify", "finalize"])
    graph.add_conditional_edges("reflect", bind(next_or_finish), ["reflect", "hypothesise", "verify", "finalize"])
    graph.add_edge("finalize", END)
    return graph.compile(checkpointer=checkpointer)
