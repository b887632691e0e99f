"""Random search over the expression grammar: the ablation arm that needs neither LLM nor parents.

An expression is drawn from the same pieces the LLM and trusted mutation use, built from the
contract (autoprune/pruning/contract.py, through `agent.mutation.swap_fields`): a weight term
(|W| or a power of it), times one statistic or a blend of two, each statistic transformed by
one of a few monotone functions, and, sometimes, a depth-weighted blend (the second statistic's
share grows with the block index: a layer-constant factor alone would not change any ranking).
Every draw passes `validate_expression` (the grammar check write_code applies to LLM replies)
and must be new by `is_new` (the run's rank-signature fingerprints), so the arm spends its
budget exactly like the others: one sandbox run per candidate.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from autoprune.agent.expression import CandidateFormatError, validate_expression
from autoprune.agent.mutation import SWAP_FIELDS, UNITS

WEIGHT_TERMS = ("W.abs()", "W.pow(2)", "W.abs().pow(1.5)", "W.abs().sqrt()")
TRANSFORMS = ("{s}", "{s}.sqrt()", "torch.log1p({s})", "{s}.pow(2)", "{s}.pow(0.25)")
MAX_DRAWS = 200


def _statistic(name: str, rng: random.Random) -> str:
    return rng.choice(TRANSFORMS).format(s=f"X.{name}")


def _relative(term: str) -> str:
    return f"({term} / {term}.mean())"


def random_expression(rng: random.Random, fields: tuple[str, ...] = SWAP_FIELDS) -> str:
    """One draw from the grammar (not yet checked)."""
    weight = rng.choice(WEIGHT_TERMS)
    first = rng.choice(fields)
    shape = rng.random()
    if shape < 0.5 or len(fields) < 2:
        return f"{weight} * {_statistic(first, rng)}"
    second = rng.choice([f for f in fields if f != first])
    a, b = _statistic(first, rng), _statistic(second, rng)
    if shape < 0.7:
        return f"{weight} * {a} * {b}"
    if UNITS.get(first) != UNITS.get(second) or a != f"X.{first}" or b != f"X.{second}":
        a, b = _relative(a), _relative(b)      # other units (or transforms): each over its layer mean
    if shape < 0.85:
        return f"{weight} * ({a} + {b})"
    return f"{weight} * ({a} + X.layer_index / X.num_layers * {b})"


def random_untested(rng: random.Random, is_new: Callable[[str], bool], fields: tuple[str, ...] = SWAP_FIELDS,
                    offered: Optional[dict] = None) -> Optional[str]:
    """A valid expression for which `is_new` holds, or None after `MAX_DRAWS` draws."""
    for _ in range(MAX_DRAWS):
        expression = random_expression(rng, fields)
        try:
            validate_expression(expression, offered)
        except CandidateFormatError:
            continue
        if is_new(expression):
            return expression
    return None
