"""finalize: the trusted finale (full fidelity, allocations, test split, export).

The report (Markdown, HTML, plots) is written from the trace once the run has finished
(`agent.runtime.run`), by the same code as `autoprune-agent report`. The stop reason recorded
here is the Budget's: the routes that lead here went because it had none left.
"""

from __future__ import annotations

import time

from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, add_timings


def finalize(state: AgentState, services: AgentServices) -> dict:
    stop_reason = services.budget.stop_reason(state) or "search finished"     # what the route to here saw
    started = time.perf_counter()
    final = services.finale.run(state)
    # `sandbox` / `fitness` stay the search's; `finale` is the finale's wall time (its own split: final["timings"]).
    timings = add_timings(state, finale=time.perf_counter() - started)
    services.trace.emit("final_result", **{k: v for k, v in final.items() if k != "winner"},
                        winner={k: v for k, v in final["winner"].items() if k != "source"})
    return {"final": final, "phase": "final", "stop_reason": stop_reason, "timings": timings}
