"""The rate-search nodes: small functions of the state that return partial updates.

seed_population → propose (LLM: selection, crossover, mutation) → validate (trusted)
→ [repair via propose | fallback (trusted offspring)] → evaluate → select → ... → finalize.
"""

from __future__ import annotations

import json
import random
import time

from autoprune.agent.llm import LLMRequestRefused
from autoprune.agent.rates.edits import apply_edit, looks_like_edit, parse_edit
from autoprune.agent.rates.evolution import fallback_offspring, is_duplicate, rank, survivors
from autoprune.agent.rates.services import RatesServices
from autoprune.agent.rates.state import Member, RatesState
from autoprune.errors import AutopruneError, BadInputError, LLMError
from autoprune.pruning.rates import check_rates, parse_rate_vector

STEPS_SHOWN = 6      # earlier LLM steps (with their results) in an edit-style prompt
EDIT_MAX_TOKENS = 40  # one step line


def thirds(rates: list[float]) -> list[float]:
    """Mean rate of the first, middle and last third of the layers (the edit prompt's summary)."""
    cuts = [0, len(rates) // 3, (2 * len(rates)) // 3, len(rates)]
    return [sum(rates[a:b]) / max(1, b - a) for a, b in zip(cuts, cuts[1:])]


def step_result(member: Member) -> str:
    if member["fitness"] < member.get("best_ppl", 0.0):
        return "new best"
    return "better than its parents" if member["fitness"] < member.get("parent_ppl", 0.0) else "worse than its parents"


def prompt_context(state: RatesState, s: RatesServices) -> dict:
    c = s.constraint
    population = state["population"]
    steps = [{"edit": m["edit"], "fitness": m["fitness"], "result": step_result(m)}
             for m in state.get("history", []) if m.get("edit")][-STEPS_SHOWN:]
    return {"model_name": s.model_name, "n_layers": c.layers, "low": c.low, "high": c.high,
            "target": c.target, "population": population, "code_style": s.proposal,
            "members": [{"rank": i, "fitness": m["fitness"], "thirds": thirds(m["rates"])}
                        for i, m in enumerate(population, 1)],
            "steps": steps, "example_offset": state.get("evaluated", 0) + state.get("attempts", 0)}


def read_child(reply: str, state: RatesState, s: RatesServices) -> dict:
    """The child in a reply: an edit step (small LLMs) or a whole vector (strong LLMs).
    Returns rates, whether projection changed an LLM-written vector, the note, and the step."""
    population = state["population"]
    if looks_like_edit(reply) and (s.proposal == "edit" or "[" not in reply):
        edit = parse_edit(reply, len(population), s.constraint.layers)
        parents = [population[r - 1]["fitness"] for r in edit.parents]
        return {"rates": apply_edit(edit, population, s.constraint), "projected": False, "edit": edit.describe(),
                "note": f"step applied by trusted code: {edit.describe()}", "parent_ppl": min(parents),
                "best_ppl": population[0]["fitness"]}
    checked = check_rates(parse_rate_vector(reply), s.constraint)
    return {"rates": checked.rates, "projected": checked.repaired, "edit": "", "note": checked.note}


def evaluated_member(s: RatesServices, member: Member) -> Member:
    """Fill in fitness and parameter fraction, and record both in the trace."""
    started = time.perf_counter()
    ppl = s.fitness(member["rates"])
    member = {**member, "fitness": ppl, "params_fraction": s.params_fraction(member["rates"])}
    s.trace.emit("fitness", id=member["id"], level=0, nwindows=len(s.windows), ppl=ppl,
                 params_fraction=round(member["params_fraction"], 5),
                 seconds=round(time.perf_counter() - started, 3))
    return member


def announce(s: RatesServices, member: Member, message: str) -> None:
    """The candidate and its verdict, with program search's payloads: a vector is a candidate's source,
    an edit step its hypothesis; `submitted` numbers the offspring the budget counts (None for seeds)."""
    s.trace.emit("candidate", id=member["id"], generation=member["generation"], origin=member["origin"],
                 hypothesis=member.get("edit", ""), path=None, parent=None,
                 source=json.dumps([round(r, 6) for r in member["rates"]]))
    submitted = member["generation"] if member["outcome"] != "seed" else None
    s.trace.emit("verdict", id=member["id"], status="ok", message=message, timings={},
                 submitted=submitted, budget_used=submitted or 0, outcome=member["outcome"])


def seed_population(state: RatesState, s: RatesServices) -> dict:
    """Generation 0: uniform and allocator-derived (OWL, SDSA) vectors, evaluated."""
    if state.get("population"):
        return {}                                  # resumed after seeding
    members: list[Member] = []
    for seed in s.seeds:
        if is_duplicate(seed["rates"], members):
            s.trace.emit("note", text=f"seed {seed['origin']} equals an earlier seed; skipped")
            continue
        member: Member = {"id": f"seed-{seed['origin']}", "rates": seed["rates"], "fitness": None,
                          "params_fraction": 0.0, "origin": seed["origin"], "outcome": "seed", "generation": 0}
        announce(s, member, "trusted seed")
        members.append(evaluated_member(s, member))
    ranked = rank(members)
    return {"population": ranked[: s.population_size], "history": members, "attempts": 0, "error": "",
            "evaluated": 0, "outcomes": {}, "pending": None}


def propose(state: RatesState, s: RatesServices) -> dict:
    """Ask the LLM for one child (a repair turn when the last answer was rejected)."""
    context = prompt_context(state, s)
    messages = s.prompts.render("propose", **context)
    if state.get("error") and state.get("reply") is not None:
        messages += [{"role": "assistant", "content": state["reply"] or "(empty)"}]
        messages += s.prompts.render("repair", **context, reply=state["reply"], error=state["error"])[1:]
    attempts = state.get("attempts", 0) + 1
    try:
        cap = s.llm_max_tokens if s.proposal == "vector" else min(s.llm_max_tokens, EDIT_MAX_TOKENS)
        reply = s.llm.chat(messages, node="propose", temperature=s.temperature, max_tokens=cap,
                           seed=s.seed + 1000 * state.get("evaluated", 0) + attempts)
    except LLMRequestRefused:
        raise                                     # a bad key or model name: the user's to fix
    except LLMError as exc:                       # a dead endpoint must not stop the search
        s.trace.emit("note", text=f"LLM call failed: {exc}")
        return {"reply": "", "error": f"no answer: {exc}", "attempts": attempts}
    return {"reply": reply.text, "error": "", "attempts": attempts}


def validate(state: RatesState, s: RatesServices) -> dict:
    """Trusted check of the LLM's vector: parse, constraint (projection), not a copy of a member."""
    cid = f"g{state.get('evaluated', 0) + 1}"
    if state.get("error"):                        # the LLM call itself failed
        s.trace.emit("verdict", id=cid, status="rejected", attempt=state["attempts"], message=state["error"])
        return {}
    try:
        child = read_child(state["reply"], state, s)
        if is_duplicate(child["rates"], state["history"]):
            raise BadInputError("this child equals a member already evaluated; choose other parents, "
                                "another cut or another move")
    except AutopruneError as exc:
        s.trace.emit("verdict", id=cid, status="rejected", attempt=state["attempts"], message=str(exc))
        return {"error": str(exc)}
    first_try = "llm_edit" if child["edit"] else ("projected" if child["projected"] else "as_is")
    member: Member = {"id": cid, "rates": child["rates"], "fitness": None, "params_fraction": 0.0,
                      "origin": "llm", "outcome": "llm_repaired" if state["attempts"] > 1 else first_try,
                      "generation": state.get("evaluated", 0) + 1,
                      **{k: child[k] for k in ("edit", "parent_ppl", "best_ppl") if k in child}}
    announce(s, member, child["note"])
    return {"pending": member, "error": ""}


def fallback(state: RatesState, s: RatesServices) -> dict:
    """The LLM failed `max_repairs + 1` times: trusted crossover + mutation, recorded honestly."""
    cid = f"g{state.get('evaluated', 0) + 1}"
    rng = random.Random(s.seed * 7919 + state.get("evaluated", 0))
    rates = fallback_offspring(state["population"], s.constraint, rng)
    while is_duplicate(rates, state["history"]):
        rates = fallback_offspring(state["population"], s.constraint, rng, mutation_rate=0.5)
    s.trace.emit("note", text=f"{cid}: the LLM failed {state['attempts']} times; trusted fallback offspring")
    member: Member = {"id": cid, "rates": rates, "fitness": None, "params_fraction": 0.0, "origin": "fallback",
                      "outcome": "fallback", "generation": state.get("evaluated", 0) + 1}
    announce(s, member, "fallback: trusted crossover + mutation")
    return {"pending": member, "error": ""}


def evaluate(state: RatesState, s: RatesServices) -> dict:
    member = evaluated_member(s, state["pending"])
    outcomes = dict(state.get("outcomes", {}))
    outcomes[member["outcome"]] = outcomes.get(member["outcome"], 0) + 1
    return {"pending": member, "history": state["history"] + [member], "outcomes": outcomes,
            "evaluated": state.get("evaluated", 0) + 1}


def select(state: RatesState, s: RatesServices) -> dict:
    """Elitism: the newcomer replaces the worst member if it is better."""
    population = survivors(state["population"], state["pending"], s.population_size)
    s.trace.emit("rating", level=0, kind="validation_ppl",
                 ratings={m["id"]: round(m["fitness"], 4) for m in population})
    return {"population": population, "pending": None, "attempts": 0, "error": "", "reply": ""}


def finalize(state: RatesState, s: RatesServices) -> dict:
    stop_reason = s.budget.stop_reason(state) or "search finished"      # what the route to here saw
    final = s.finalize(state, s) if s.finalize is not None else {"best": rank(state["population"])[0]}
    s.trace.emit("final_result", **final)
    return {"final": final, "stop_reason": stop_reason}


NODES = {"seed_population": seed_population, "propose": propose, "validate": validate,
         "fallback": fallback, "evaluate": evaluate, "select": select, "finalize": finalize}
