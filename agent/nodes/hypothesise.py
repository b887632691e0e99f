"""hypothesise: one named, testable hypothesis about what makes a weight important."""

from __future__ import annotations

import re

from autoprune.agent.insights import InsightGraph
from autoprune.agent.nodes.common import ask
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, Hypothesis

_LINE = re.compile(r"HYPOTHESIS\s*:\s*(?P<name>[^:\n]{1,60}?)\s*:\s*(?P<statement>[^\n]+)", re.I)


def parse_hypothesis(text: str, generation: int) -> Hypothesis:
    """The first `HYPOTHESIS: name: sentence` line; otherwise the first sentence, named by generation."""
    match = _LINE.search(text)
    if match:
        name, statement = match.group("name"), match.group("statement")
    else:
        lines = [ln.strip(" -*#") for ln in text.splitlines() if ln.strip(" -*#")]
        name, statement = f"h{generation}", (lines[0] if lines else "")
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", name.strip().lower()).strip("-")[:40] or f"h{generation}"
    statement = " ".join(statement.split())[:300] or "a weight matters when it is large and its input is large"
    return Hypothesis(name=name, statement=statement, generation=generation)


def unique_name(name: str, known: dict, generation: int) -> str:
    return name if name not in known else f"{name}-g{generation}"


TRUSTED_HYPOTHESES = {      # the arms without an LLM (agent/proposer.py) state what they test
    "mutation": "a single-point mutation of a population parent (MAP-Elites cell) ranks weights better",
    "random": "a random expression of the contract's grammar ranks weights better",
}


def hypothesise(state: AgentState, services: AgentServices) -> dict:
    generation = int(state.get("generation", 0)) + 1
    proposer = services.config.proposer
    if proposer in TRUSTED_HYPOTHESES:
        hypothesis, accounting = Hypothesis(name=f"{proposer}-g{generation}", statement=TRUSTED_HYPOTHESES[proposer],
                                            generation=generation), {}
    else:
        exchange, accounting = ask(services, {**state, "generation": generation}, "hypothesise", n_hypotheses=1,
                                   example_offset=generation)
        hypothesis = parse_hypothesis(exchange.text, generation)
    graph = InsightGraph.from_dict(state.get("insights"))
    hypothesis["name"] = unique_name(hypothesis["name"], graph.hypotheses, generation)
    graph.add_hypothesis(hypothesis["name"], hypothesis["statement"])
    services.trace.emit("hypothesis", **hypothesis)
    return {"generation": generation, "hypothesis": hypothesis, "current": None, "repairs": 0, "attempts": 0,
            "last_error": None, "insights": graph.to_dict(), **accounting}
