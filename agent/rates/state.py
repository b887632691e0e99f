"""The graph's state: plain lists and dicts, so the SQLite checkpointer can store it."""

from __future__ import annotations

from typing import NotRequired, Optional

from typing_extensions import TypedDict  # pydantic validates it on 3.11 (agent/checkpoints.py)

# How an offspring came to be (the counts the report states).
OUTCOMES = ("as_is", "projected", "llm_edit", "llm_repaired", "fallback")


class Member(TypedDict):
    id: str
    rates: list[float]
    fitness: Optional[float]            # validation perplexity (lower is better)
    params_fraction: float              # decoder parameters kept
    origin: str                         # "uniform", "owl", "sdsa", "llm", "fallback"
    outcome: str                        # one of OUTCOMES, or "seed"
    generation: int
    # LLM edit steps only (agent/rates/edits.py): the step, its parents' best and the population's
    # best perplexity when it was proposed (what the next prompts report as its result)
    edit: NotRequired[str]
    parent_ppl: NotRequired[float]
    best_ppl: NotRequired[float]


class RatesState(TypedDict, total=False):
    run_id: str
    population: list[Member]            # survivors, best first
    history: list[Member]               # every evaluated member, in order
    pending: Optional[Member]           # validated offspring waiting for fitness
    reply: str                          # the LLM's last answer
    error: str                          # what the validator said about it ("" when fine)
    attempts: int                       # LLM attempts for the current offspring
    evaluated: int                      # offspring evaluated so far (the budget counter)
    outcomes: dict[str, int]
    stop_reason: Optional[str]          # the Budget's, recorded by finalize
    final: dict
