"""Edit steps (the small-LLM form of a Self-Pruner step): parsing untrusted replies, applying them."""

from __future__ import annotations

import pytest

from autoprune.agent.rates.edits import MAX_MOVE, RateEdit, apply_edit, looks_like_edit, parse_edit
from autoprune.errors import BadInputError
from autoprune.pruning.rates import RateConstraint

C = RateConstraint(target=0.3, low=0.0, high=0.6, layers=6)


def test_parse_reads_the_step_in_its_usual_shapes():
    step = parse_edit("parents #1 #3, cut at layer 2, move 0.05 from layer 4 to layer 0", 4, 6)
    assert step == RateEdit(parents=(1, 3), cut=2, moves=((0.05, 4, 0),))
    assert step.describe() == "parents #1 #3, cut at layer 2, move 0.05 from layer 4 to layer 0"
    loose = parse_edit("Parents: #2 and #1. Cut after layer 5; move .1 from layer 1 to layer 3, "
                       "move 0.05 from layer 0 to layer 2", 4, 6)
    assert loose == RateEdit(parents=(2, 1), cut=5, moves=((0.1, 1, 3), (0.05, 0, 2)))
    assert parse_edit("parents #2", 4, 6) == RateEdit(parents=(2, 2), cut=3)    # mutation-free copy point
    assert looks_like_edit("parents #1 #2") and not looks_like_edit("[0.3, 0.3]")


@pytest.mark.parametrize("reply, reason", [
    ("I would prune the middle layers", "no step found"),
    ("parents #1 #9, cut at layer 2", "#9 does not exist"),
    ("parents #0 #1", "#0 does not exist"),
    ("parents #1 #2, cut at layer 40", "outside the model"),
    ("parents #1 #2, cut at layer 3, move 0.05 from layer 38 to layer 4", "layer 38 does not exist"),
    ("parents #1 #2, cut at layer 3, move 0 from layer 1 to layer 4", "out of range"),
    ("parents #1 #2, cut at layer 3, move 0.1 from layer 4 to layer 4", "same layer"),
])
def test_bad_steps_are_rejected_with_the_reason(reply, reason):
    with pytest.raises(BadInputError, match=reason):
        parse_edit(reply, 4, 6)


def test_a_move_larger_than_the_maximum_is_applied_at_the_maximum():
    edit = parse_edit("parents #1 #2, cut at layer 3, move 0.9 from layer 1 to layer 4", 4, 6)
    assert edit.moves == ((MAX_MOVE, 1, 4),) and f"move {MAX_MOVE:g} from layer 1" in edit.describe()


def test_apply_crosses_over_moves_and_keeps_the_constraint():
    ranked = [{"rates": [0.2] * 3 + [0.4] * 3}, {"rates": [0.4] * 3 + [0.2] * 3}]
    crossed = apply_edit(RateEdit(parents=(1, 2), cut=3), ranked, C)
    assert crossed == pytest.approx([0.3] * 6)          # [0.2]*3 + [0.2]*3, shifted onto the mean 0.3
    moved = apply_edit(RateEdit(parents=(1, 1), cut=6, moves=((0.1, 0, 5),)), ranked, C)
    assert moved == pytest.approx([0.1, 0.2, 0.2, 0.4, 0.4, 0.5])
    clipped = apply_edit(RateEdit(parents=(1, 1), cut=6, moves=((0.3, 0, 5), (0.3, 1, 5))), ranked, C)
    assert max(clipped) <= C.high + 1e-9 and min(clipped) >= C.low
    assert sum(clipped) / 6 == pytest.approx(C.target, abs=1e-6)
