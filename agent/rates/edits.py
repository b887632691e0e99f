"""Offspring written as one evolutionary step over the population (the small-LLM proposal form).

A strong LLM writes the child vector itself (a JSON list, `parse_rate_vector`). A 135M model
cannot write 30 numbers that mean anything, but it can fill in the decisions of one step:

    parents #1 #3, cut at layer 12, move 0.05 from layer 4 to layer 20

= selection (two members by rank), one-point crossover (layers below 12 from #1, the rest
from #3) and mutation (layer 4 pruned 0.05 less, layer 20 pruned 0.05 more; the mean stays).
The LLM decides; trusted code applies the step and projects the child onto the constraint.
A reply is untrusted text: every number is range-checked and each problem is named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoprune.errors import BadInputError
from autoprune.pruning.rates import RateConstraint, project

MAX_MOVE = 0.3
STEP_FORMAT = "parents #A #B, cut at layer K, move D from layer I to layer J"
_PARENTS = re.compile(r"parents?\s*:?\s*#?\s*(\d+)(?:\s*(?:,|and|&)?\s*#\s*(\d+))?", re.IGNORECASE)
_CUT = re.compile(r"cut\s*(?:at|after|:)?\s*(?:layer)?\s*(\d+)", re.IGNORECASE)
_MOVE = re.compile(r"move\s*:?\s*(\d*\.?\d+)\s*from\s*layer\s*(\d+)\s*to\s*layer\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class RateEdit:
    parents: tuple[int, int]                         # ranks in the population, 1 = best
    cut: int                                         # first layer taken from the second parent
    moves: tuple[tuple[float, int, int], ...] = ()   # (amount, from layer, to layer)

    def describe(self) -> str:
        text = f"parents #{self.parents[0]} #{self.parents[1]}, cut at layer {self.cut}"
        return text + "".join(f", move {d:g} from layer {i} to layer {j}" for d, i, j in self.moves)


def looks_like_edit(text: str) -> bool:
    return bool(_PARENTS.search(text or ""))


def parse_edit(text: str, population_size: int, layers: int) -> RateEdit:
    """The step in an LLM reply, or BadInputError saying what is wrong with it."""
    match = _PARENTS.search(text or "")
    if not match:
        raise BadInputError(f"no step found; answer with one line: {STEP_FORMAT}")
    first = int(match.group(1))
    second = int(match.group(2)) if match.group(2) else first
    for rank in (first, second):
        if not 1 <= rank <= population_size:
            raise BadInputError(f"parent #{rank} does not exist: the population has #1 to #{population_size}")
    cut_match = _CUT.search(text)
    cut = int(cut_match.group(1)) if cut_match else layers // 2
    if not 0 <= cut <= layers:
        raise BadInputError(f"cut at layer {cut} is outside the model: layers are 0 to {layers - 1}")
    moves = tuple(checked_move(float(d), int(i), int(j), layers) for d, i, j in _MOVE.findall(text))
    return RateEdit(parents=(first, second), cut=cut, moves=moves)


def checked_move(amount: float, source: int, target: int, layers: int) -> tuple[float, int, int]:
    """A move as trusted code applies it: a larger amount than MAX_MOVE is clipped to MAX_MOVE (the
    step's direction is kept; the applied step, as `describe()` prints it, is what the trace records)."""
    if not amount > 0.0:
        raise BadInputError(f"move {amount:g} is out of range: move between 0.01 and {MAX_MOVE}")
    amount = min(amount, MAX_MOVE)
    for layer in (source, target):
        if not 0 <= layer < layers:
            raise BadInputError(f"layer {layer} does not exist: layers are 0 to {layers - 1}")
    if source == target:
        raise BadInputError(f"move from layer {source} to the same layer changes nothing")
    return amount, source, target


def apply_edit(edit: RateEdit, ranked: list[dict], constraint: RateConstraint) -> list[float]:
    """Crossover of the two parents at `cut`, the moves, then projection onto the constraint."""
    mother, father = ranked[edit.parents[0] - 1]["rates"], ranked[edit.parents[1] - 1]["rates"]
    child = list(mother[: edit.cut]) + list(father[edit.cut:])
    for amount, source, target in edit.moves:
        child[source] -= amount
        child[target] += amount
    return project(child, constraint)
