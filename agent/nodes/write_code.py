"""write_code: the hypothesis (or the last exact error, for a repair) -> a candidate source file.

Each attempt gets a deterministic id (`g007-a1` = generation 7, first repair), so
a resumed run re-creates the same candidate rather than a new one. A reply is
classified by one pure function, `classify_reply`: a `Candidate` (its source and
metric fingerprint, computed once and stored in its record) or a `Rejection` with
its reason. A rejected reply is not sent to the sandbox (it costs no budget): its
reason goes back to the LLM like a sandbox error, within the same repair bound. A
reply that repeats a tested metric may instead become a trusted mutation of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

from autoprune.agent.archive import candidate_path, metric_fingerprint, read_source, known_metrics
from autoprune.agent.codegen import candidate_from_reply
from autoprune.agent.expression import CandidateFormatError, expression_of, wrap_expression
from autoprune.agent.mutation import swap_fields, untested_mutation
from autoprune.agent.nodes.common import FailedExchange, ask
from autoprune.agent.population import population_of
from autoprune.agent.proposer import propose
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, CandidateRecord, candidate_id, with_candidate


@dataclass(frozen=True)
class Candidate:
    """A reply worth a sandbox run: its source and what it computes (`archive.metric_fingerprint`)."""

    source: str
    fingerprint: str
    origin: str = "llm"                      # "llm" | "mutation" (trusted code rewrote a repeat)
    parent: Optional[str] = None             # for a mutation: the candidate it was mutated from


@dataclass(frozen=True)
class Rejection:
    """A reply not worth a sandbox run; `reason` is the repair instruction the LLM gets."""

    reason: str
    repeats: Optional[Mapping] = None        # the earlier candidate's record, when the reply repeats one
    source: str = ""                         # the reply's code, when it had usable code


Classified = Union[Candidate, Rejection]


def classify_reply(text: str, *, style: str, hypothesis: str, tested: Mapping[str, Mapping],
                   call_error: Optional[str] = None, offered: Optional[Mapping[str, bool]] = None) -> Classified:
    """What an LLM reply is: a new candidate, a repeat of a tested metric (`tested`: fingerprint ->
    earlier record), or unusable (`offered`: the statistics the run collected, `RunContext.offered`).
    Pure: reads nothing but its arguments and never raises for a reply."""
    if call_error is not None:
        return Rejection(f"the LLM call failed, nothing was written ({call_error})")
    try:
        source = candidate_from_reply(text, style, hypothesis=hypothesis, offered=offered)
    except CandidateFormatError as exc:
        return Rejection(str(exc))
    fingerprint = metric_fingerprint(source)
    earlier = tested.get(fingerprint)
    if earlier is None:
        return Candidate(source, fingerprint)
    return Rejection(repeat_reason(earlier), repeats=earlier, source=source)


def repeat_reason(earlier: Mapping) -> str:
    result = f"perplexity {earlier['fitness']:.1f}" if earlier.get("fitness") is not None else earlier.get("status")
    return (f"this metric ranks weights exactly like {earlier['id']}, already tested ({result}). "
            "Write a DIFFERENT one that follows the hypothesis.")


def write_code(state: AgentState, services: AgentServices) -> dict:
    # Serial runs: attempt == repairs so far. Parallel runs also write several fresh candidates per
    # hypothesis, so the attempt counter (not the repair counter) numbers them.
    generation, attempt = int(state["generation"]), int(state.get("attempts", state.get("repairs", 0)))
    hypothesis = state["hypothesis"]
    statement = f"{hypothesis['name']}: {hypothesis['statement']}"
    tested = known_metrics(state, services.run_dir)
    if services.config.proposer != "llm":           # the ablation arms without an LLM (agent/proposer.py)
        verdict, accounting = proposed_without_llm(state, services, tested, statement, attempt), {}
    else:
        exchange, accounting = ask_for_code(state, services, statement, attempt)
        verdict = classify_reply(exchange.text, style=services.context.code_style, hypothesis=statement,
                                 tested=tested, call_error=exchange.error if isinstance(exchange, FailedExchange)
                                 else None, offered=services.context.offered())
        if isinstance(verdict, Rejection) and verdict.repeats is not None:
            verdict = mutated_instead(state, services, verdict, tested, statement, attempt)
    if isinstance(verdict, Rejection):
        services.trace.emit("note", text=f"generation {generation} attempt {attempt}: no usable code: {verdict.reason}")
        return {"last_error": verdict.reason, "repairs": int(state.get("repairs", 0)) + 1, "attempts": attempt + 1,
                **accounting}
    cid = candidate_id(generation, attempt)
    record = written_record(state, services, cid, verdict)
    services.trace.emit("candidate", **{k: record[k] for k in ("id", "generation", "origin", "hypothesis", "path",
                                                               "parent")}, source=verdict.source)
    return {"candidates": with_candidate(state, cid, **record), "current": cid,
            "queue": list(state.get("queue", [])) + [cid], "attempts": attempt + 1, "last_error": None,
            **accounting}


def ask_for_code(state: AgentState, services: AgentServices, statement: str, attempt: int):
    """The LLM's reply for a fresh candidate, or for a repair of the current one with its exact error."""
    if not state.get("last_error"):
        return ask(services, state, "write_code", attempt=attempt, hypothesis=statement)
    parent = state.get("current")
    previous = read_source(services.run_dir, state["candidates"][parent]) if parent in state["candidates"] else ""
    return ask(services, state, "write_code", attempt=attempt, template="repair", hypothesis=statement,
               error=state["last_error"], source=previous, expression=expression_of(previous))


def written_record(state: AgentState, services: AgentServices, cid: str, candidate: Candidate) -> CandidateRecord:
    """The candidate's source file, written, and its fresh record."""
    path = candidate_path(cid)
    (Path(services.run_dir) / path).parent.mkdir(parents=True, exist_ok=True)
    (Path(services.run_dir) / path).write_text(candidate.source, encoding="utf-8")
    parent = candidate.parent if candidate.origin != "llm" else state.get("current")
    return CandidateRecord(id=cid, generation=int(state["generation"]), origin=candidate.origin,
                           hypothesis=state["hypothesis"]["name"], path=path,
                           parent=parent if parent in state.get("candidates", {}) else None, status="written",
                           message="", masks_path=None, nll={}, fitness=None, level=-1, reflection="",
                           fingerprint=candidate.fingerprint)


def mutated_instead(state: AgentState, services: AgentServices, repeat: Rejection, tested: Mapping[str, Mapping],
                    statement: str, attempt: int) -> Classified:
    """An untested single-point mutation of a repeated expression (agent/mutation.py), made by
    trusted code; the repeat's rejection (back to the LLM) when mutation is off or finds nothing."""
    mutable = services.config.mutate_repeats and services.context.code_style == "expression"
    expression = expression_of(repeat.source) if mutable else ""
    rng = random.Random(f"{services.config.seed}-{state['generation']}-{attempt}")   # same choice on resume
    mutated = untested_mutation(expression, lambda e: metric_fingerprint(wrap_expression(e)) not in tested,
                                rng, fields=swap_fields(**services.context.offered()),
                                prefer=population_of(state, services.run_dir).opens_cell) if expression else None
    if mutated is None:
        return repeat
    services.trace.emit("note", text=f"generation {state['generation']} attempt {attempt}: the LLM repeated "
                                     f"{repeat.repeats['id']} ({expression}); trusted mutation: {mutated}")
    source = wrap_expression(mutated, hypothesis=statement)
    return Candidate(source, metric_fingerprint(source), origin="mutation", parent=repeat.repeats["id"])


def proposed_without_llm(state: AgentState, services: AgentServices, tested: Mapping[str, Mapping],
                         statement: str, attempt: int) -> Classified:
    """`--proposer mutation|random`: trusted code proposes an untested expression (agent/proposer.py)."""
    rng = random.Random(f"{services.config.seed}-{services.config.proposer}-{state['generation']}-{attempt}")
    proposal = propose(services.config.proposer, state, services.run_dir, rng=rng, offered=services.context.offered(),
                       is_new=lambda e: metric_fingerprint(wrap_expression(e)) not in tested)
    if proposal is None:
        return Rejection(f"--proposer {services.config.proposer} found no untested expression")
    expression, origin, parent = proposal
    source = wrap_expression(expression, hypothesis=statement)
    return Candidate(source, metric_fingerprint(source), origin=origin, parent=parent)
