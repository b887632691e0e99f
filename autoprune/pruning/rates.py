"""Layer-wise pruning-rate vectors (Self-Pruner mode): trusted validation and projection.

A rate vector gives, per decoder layer, the fraction of that layer's prunable structure
to remove. The global constraint is on the mean rate (layers of a decoder have equal
size), within per-layer bounds. Vectors proposed by an LLM are untrusted data: they are
parsed, checked, and — when only slightly off — projected onto the constraint, with the
repair recorded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from autoprune.errors import BadInputError

TOLERANCE = 1e-6


@dataclass(frozen=True)
class RateConstraint:
    target: float          # required mean removal rate
    low: float = 0.0       # per-layer bounds
    high: float = 0.9
    layers: int = 1

    def describe(self) -> str:
        return (f"{self.layers} numbers, each in [{self.low:.2f}, {self.high:.2f}], "
                f"mean exactly {self.target:.4f}")


@dataclass
class CheckedRates:
    rates: list[float]
    repaired: bool          # True when projection changed the proposal
    note: str


def parse_rate_vector(text: str) -> list[float]:
    """The first JSON-style list of numbers in an LLM reply."""
    match = re.search(r"\[[^\[\]]*\]", text)
    if not match:
        raise BadInputError("no list of numbers found; answer with one JSON list like [0.5, 0.4, ...]")
    try:
        values = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"the list is not valid JSON: {exc.msg}") from exc
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise BadInputError("the list must contain only numbers")
    return [float(v) for v in values]


def project(rates: list[float], constraint: RateConstraint, iterations: int = 100) -> list[float]:
    """Clip to the bounds and shift so the mean equals the target (iterative clip-and-shift)."""
    values = [min(max(r, constraint.low), constraint.high) for r in rates]
    for _ in range(iterations):
        gap = constraint.target - sum(values) / len(values)
        if abs(gap) < TOLERANCE / 10:
            break
        free = [i for i, v in enumerate(values)
                if (gap > 0 and v < constraint.high) or (gap < 0 and v > constraint.low)]
        if not free:
            break
        step = gap * len(values) / len(free)
        for i in free:
            values[i] = min(max(values[i] + step, constraint.low), constraint.high)
    return values


def check_rates(rates: list[float], constraint: RateConstraint, *, max_repair: float = 0.05) -> CheckedRates:
    """Validate a proposal; small violations are projected away, large ones rejected with a reason."""
    if len(rates) != constraint.layers:
        raise BadInputError(f"got {len(rates)} rates, need {constraint.describe()}")
    if any(math.isnan(r) or math.isinf(r) for r in rates):
        raise BadInputError("rates must be finite numbers")
    mean = sum(rates) / len(rates)
    if abs(mean - constraint.target) > max_repair:
        raise BadInputError(f"mean rate {mean:.4f} is too far from the target {constraint.target:.4f}; "
                            f"need {constraint.describe()}")
    fixed = project(rates, constraint)
    if abs(sum(fixed) / len(fixed) - constraint.target) > TOLERANCE:
        raise BadInputError(f"no vector within the bounds meets the target: need {constraint.describe()}")
    changed = max(abs(a - b) for a, b in zip(rates, fixed)) > TOLERANCE
    note = f"projected onto the constraint (max change {max(abs(a - b) for a, b in zip(rates, fixed)):.4f})" \
        if changed else "met the constraint as proposed"
    return CheckedRates(rates=fixed, repaired=changed, note=note)


def uniform_rates(constraint: RateConstraint) -> list[float]:
    return [constraint.target] * constraint.layers
