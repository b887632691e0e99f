"""Evaluators by name, from the entry-point group `autoprune.evaluators` (built-ins included)."""

from __future__ import annotations

from autoprune.errors import BadInputError
from autoprune.evaluators.base import Evaluator
from autoprune.plugins import loaded_plugins

GROUP = "autoprune.evaluators"


def available_evaluators() -> dict[str, type]:
    return loaded_plugins(GROUP)


def get_evaluator(name: str) -> Evaluator:
    """Instantiate the evaluator registered as `name`."""
    found = available_evaluators()
    if name not in found:
        raise BadInputError(f"unknown evaluator {name!r} (installed: {', '.join(sorted(found)) or 'none'})")
    factory = found[name]
    evaluator = factory() if callable(factory) else factory
    if not isinstance(evaluator, Evaluator):
        raise BadInputError(f"evaluator plugin {name!r} does not implement evaluate(model, tokenizer, request)")
    return evaluator
