"""Who proposes the next candidate: the ablation arms of `--proposer`.

- "llm" (default): the LLM writes it; a repeat of a tested metric is mutated by trusted code.
- "mutation": trusted mutation only (agent/mutation.py) of a parent drawn MAP-Elites style from
  the population (agent/population.py), preferring mutants that open an empty cell; a random
  restart (origin "random") once every parent's neighbourhood was tested.
- "random": a random expression of the same grammar (agent/random_search.py).

The two arms without an LLM make no LLM call at all, so the run starts no LLM server
(`NoLLMClient` stands in and refuses any call, which would be a bug). Every proposal is still
an untrusted candidate (static gate, sandbox, mask checks) and costs one unit of budget, as an
LLM candidate does, so the arms compare at equal budgets.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from autoprune.agent.llm import LLMRequestRefused
from autoprune.agent.mutation import swap_fields, untested_mutation
from autoprune.agent.population import population_of
from autoprune.agent.random_search import random_untested

FALLBACK_PARENT = "W.abs() * X.norm"       # Wanda's metric, when no verified one-line metric exists yet


class NoLLMClient:
    """The client of a run whose proposer needs no LLM: any call is a bug, refused with one line."""

    def __init__(self, proposer: str):
        self.proposer = proposer

    def chat(self, messages: list[dict], **options: Any):
        raise LLMRequestRefused(f"--proposer {self.proposer} makes no LLM call, but one was attempted")


def propose(proposer: str, state: Mapping, run_dir: Path, *, rng: random.Random, is_new: Callable[[str], bool],
            offered: Mapping[str, bool]) -> Optional[tuple[str, str, Optional[str]]]:
    """(expression, origin, parent id or None) from the trusted arm `proposer`, or None when it found
    nothing untested."""
    fields = swap_fields(**offered)
    if proposer == "random":
        expression = random_untested(rng, is_new, fields, dict(offered))
        return (expression, "random", None) if expression else None
    population = population_of(state, run_dir)
    for parent in population.parents(rng) or [None]:
        expression = parent.expression if parent else FALLBACK_PARENT
        mutant = untested_mutation(expression, is_new, rng, fields=fields, prefer=population.opens_cell)
        if mutant is not None:
            return mutant, "mutation", parent.cid if parent else None
    # Every parent's neighbourhood was tested: restart from a random point of the grammar (a run
    # without an LLM has no call cap to end it, so the arm must not run dry while budget is left).
    expression = random_untested(rng, is_new, fields, dict(offered))
    return (expression, "random", None) if expression else None
