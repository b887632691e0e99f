"""evaluate: trusted multi-fidelity fitness of the pending (candidate, level) pairs (of the masked model
after the run's search-time refit; the trace's fitness event states which, and its refit seconds)."""

from __future__ import annotations

import time
from pathlib import Path

from autoprune.agent.archive import WANDA_ID
from autoprune.agent.fitness import perplexity_of
from autoprune.agent.mask_files import load_masks
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, add_timings


def evaluate(state: AgentState, services: AgentServices) -> dict:
    candidates = dict(state.get("candidates", {}))
    fitness, fitness_seconds = services.fitness, 0.0
    for cid, level in state.get("pending_evals", []):
        record = dict(candidates[cid])
        if not record.get("masks_path"):
            continue        # masks were dropped (fell out of the elite): no promotion without them
        started = time.perf_counter()
        path = Path(services.run_dir) / record["masks_path"]
        nlls = fitness.evaluate(cid, lambda: load_masks(path), level)
        seconds = time.perf_counter() - started
        ppl = perplexity_of(nlls)
        record["nll"] = {**record.get("nll", {}), str(level): nlls}
        if level >= record.get("level", -1):
            record.update(level=level, fitness=ppl)
        candidates[cid] = record
        fitness_seconds += seconds
        services.trace.emit("fitness", id=cid, level=level, nwindows=len(nlls), nlls=[round(v, 5) for v in nlls],
                            ppl=ppl, seconds=round(seconds, 3), refit=fitness.refit,
                            refit_s=round(fitness.last_timings.get("refit_s", 0.0), 3))
        if cid == WANDA_ID:
            services.trace.emit("baseline", name="wanda", level=level, nwindows=len(nlls), ppl=ppl)
    return {"candidates": candidates, "pending_evals": [], "timings": add_timings(state, fitness=fitness_seconds)}
