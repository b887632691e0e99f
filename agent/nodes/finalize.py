"""finalize: the trusted finale (full fidelity, allocations, test split, export).

The report (Markdown, HTML, plots) is written from the trace once the run has finished
(`agent.run`), by the same code as `autoprune-agent report`.
"""

from __future__ import annotations

from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, add_timing


def finalize(state: AgentState, services: AgentServices) -> dict:
    stop_reason = state.get("stop_reason") or services.budget.stop_reason(state) or "search finished"
    final = services.finale.run(state)
    timings = dict(state.get("timings", {}))
    for kind in ("sandbox", "fitness"):
        timings = add_timing({"timings": timings}, kind, final["timings"].get(kind, 0.0))
    services.trace.emit("final_result", **{k: v for k, v in final.items() if k != "winner"},
                        winner={k: v for k, v in final["winner"].items() if k != "source"})
    return {"final": final, "phase": "final", "stop_reason": stop_reason, "timings": timings}
