"""analyse: the model's outlier/skew profile and the seeds' results -> analysis text for later prompts."""

from __future__ import annotations

from autoprune.agent.nodes.common import ask
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState


def analyse(state: AgentState, services: AgentServices) -> dict:
    if services.config.proposer != "llm":          # no LLM in this run: the profile is the analysis
        return {"analysis": services.context.model_profile, "phase": "search"}
    exchange, accounting = ask(services, state, "analyse")
    bullets = exchange.text.strip() or "(the LLM gave no analysis)"
    analysis = f"{services.context.model_profile}\n\nObservations:\n{bullets}"
    return {"analysis": analysis, "phase": "search", **accounting}
