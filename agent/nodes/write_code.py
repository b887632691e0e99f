"""write_code: the hypothesis (or the last exact error, for a repair) -> a candidate source file.

Each attempt gets a deterministic id (`g007-a1` = generation 7, first repair), so
a resumed run re-creates the same candidate rather than a new one. A reply with
no usable code is not sent to the sandbox (it costs no budget): its error goes
back to the LLM like a sandbox error, within the same repair bound.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from autoprune.agent.archive import (already_tested, candidate_path, metric_fingerprint, read_source,
                                     tested_fingerprints)
from autoprune.agent.codegen import candidate_from_reply
from autoprune.agent.expression import CandidateFormatError, expression_of, wrap_expression
from autoprune.agent.mutation import untested_mutation
from autoprune.agent.nodes.common import FailedExchange, ask
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
    origin = "llm"
    try:
        if isinstance(exchange, FailedExchange):
            raise CandidateFormatError(f"the LLM call failed, nothing was written ({exchange.error})")
        source = candidate_from_reply(exchange.text, style, hypothesis=statement)
        try:
            duplicate_check(state, services, source)
        except AlreadyTested as repeated:
            source = mutated_instead(state, services, source, repeated, statement, attempt)
            origin, parent = "mutation", repeated.earlier["id"]
    except CandidateFormatError as exc:
        services.trace.emit("note", text=f"generation {generation} attempt {attempt}: no usable code: {exc}")
        return {"last_error": str(exc), "repairs": int(state.get("repairs", 0)) + 1, "attempts": attempt + 1,
                **accounting}
    cid = candidate_id(generation, attempt)
    path = candidate_path(cid)
    (Path(services.run_dir) / path).parent.mkdir(parents=True, exist_ok=True)
    (Path(services.run_dir) / path).write_text(source, encoding="utf-8")
    record = CandidateRecord(id=cid, generation=generation, origin=origin, hypothesis=hypothesis["name"], path=path,
                             parent=parent if parent in state.get("candidates", {}) else None, status="written",
                             message="", masks_path=None, nll={}, fitness=None, level=-1, reflection="")
    services.trace.emit("candidate", **{k: record[k] for k in ("id", "generation", "origin", "hypothesis", "path",
                                                               "parent")}, source=source)
    return {"candidates": with_candidate(state, cid, **record), "current": cid,
            "queue": list(state.get("queue", [])) + [cid], "attempts": attempt + 1, "last_error": None,
            **accounting}


class AlreadyTested(CandidateFormatError):
    """The reply computes a metric an earlier candidate (`earlier`) already computed."""

    def __init__(self, message: str, earlier: dict):
        super().__init__(message)
        self.earlier = earlier


def duplicate_check(state: AgentState, services: AgentServices, source: str) -> None:
    """A metric already tested costs no sandbox run: it goes back to the LLM as an error."""
    earlier = already_tested(state, services.run_dir, source)
    if earlier is None:
        return
    result = f"perplexity {earlier['fitness']:.1f}" if earlier.get("fitness") is not None else earlier.get("status")
    raise AlreadyTested(f"this metric ranks weights exactly like {earlier['id']}, already tested ({result}). "
                        "Write a DIFFERENT one that follows the hypothesis.", earlier)


def mutated_instead(state: AgentState, services: AgentServices, source: str, repeated: AlreadyTested,
                    statement: str, attempt: int) -> str:
    """An untested single-point mutation of a repeated expression (agent/mutation.py), made by
    trusted code; re-raises `repeated` (back to the LLM) when mutation is off or finds nothing."""
    mutable = services.config.mutate_repeats and services.context.code_style == "expression"
    expression = expression_of(source) if mutable else ""
    mutated = mutation_of(state, services, expression, statement, attempt) if expression else None
    if mutated is None:
        raise repeated
    services.trace.emit("note", text=f"generation {state['generation']} attempt {attempt}: the LLM repeated "
                                     f"{repeated.earlier['id']} ({expression}); trusted mutation: {mutated}")
    return wrap_expression(mutated, hypothesis=statement)


def mutation_of(state: AgentState, services: AgentServices, expression: str, statement: str,
                attempt: int) -> Optional[str]:
    tested = tested_fingerprints(state, services.run_dir)
    rng = random.Random(f"{services.config.seed}-{state['generation']}-{attempt}")   # same choice on resume
    return untested_mutation(expression, lambda e: metric_fingerprint(wrap_expression(e)) not in tested, rng)
