"""write_code: the hypothesis (or the last exact error, for a repair) -> a candidate source file.

Each attempt gets a deterministic id (`g007-a1` = generation 7, first repair), so
a resumed run re-creates the same candidate rather than a new one. A reply with
no usable code is not sent to the sandbox (it costs no budget): its error goes
back to the LLM like a sandbox error, within the same repair bound.
"""

from __future__ import annotations

from pathlib import Path

from autoprune.agent.archive import already_tested, candidate_path, read_source
from autoprune.agent.codegen import candidate_from_reply
from autoprune.agent.expression import CandidateFormatError
from autoprune.agent.nodes.common import ask, expression_of
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, CandidateRecord, candidate_id, with_candidate


def write_code(state: AgentState, services: AgentServices) -> dict:
    # Serial runs: attempt == repairs so far. Parallel runs also write several fresh candidates per
    # hypothesis, so the attempt counter (not the repair counter) numbers them.
    generation, attempt = int(state["generation"]), int(state.get("attempts", state.get("repairs", 0)))
    hypothesis = state["hypothesis"]
    statement = f"{hypothesis['name']}: {hypothesis['statement']}"
    parent = state.get("current")
    style = services.context.code_style
    if state.get("last_error"):
        previous = read_source(services.run_dir, state["candidates"][parent]) if parent in state["candidates"] else ""
        exchange, accounting = ask(services, state, "write_code", attempt=attempt, template="repair",
                                   hypothesis=statement, error=state["last_error"], source=previous,
                                   expression=expression_of(previous))
    else:
        exchange, accounting = ask(services, state, "write_code", attempt=attempt, hypothesis=statement)
    try:
        source = candidate_from_reply(exchange.text, style, hypothesis=statement)
        duplicate_check(state, services, source)
    except CandidateFormatError as exc:
        services.trace.emit("note", text=f"generation {generation} attempt {attempt}: no usable code: {exc}")
        return {"last_error": str(exc), "repairs": int(state.get("repairs", 0)) + 1, "attempts": attempt + 1,
                **accounting}
    cid = candidate_id(generation, attempt)
    path = candidate_path(cid)
    (Path(services.run_dir) / path).parent.mkdir(parents=True, exist_ok=True)
    (Path(services.run_dir) / path).write_text(source, encoding="utf-8")
    record = CandidateRecord(id=cid, generation=generation, origin="llm", hypothesis=hypothesis["name"], path=path,
                             parent=parent if parent in state.get("candidates", {}) else None, status="written",
                             message="", masks_path=None, nll={}, fitness=None, level=-1, reflection="")
    services.trace.emit("candidate", **{k: record[k] for k in ("id", "generation", "origin", "hypothesis", "path",
                                                               "parent")}, source=source)
    return {"candidates": with_candidate(state, cid, **record), "current": cid,
            "queue": list(state.get("queue", [])) + [cid], "attempts": attempt + 1, "last_error": None,
            **accounting}


def duplicate_check(state: AgentState, services: AgentServices, source: str) -> None:
    """A metric already tested costs no sandbox run: it goes back to the LLM as an error."""
    earlier = already_tested(state, services.run_dir, source)
    if earlier is None:
        return
    result = f"perplexity {earlier['fitness']:.1f}" if earlier.get("fitness") is not None else earlier.get("status")
    raise CandidateFormatError(f"this metric was already tested as {earlier['id']} ({result}). "
                               "Write a DIFFERENT one that follows the hypothesis.")
