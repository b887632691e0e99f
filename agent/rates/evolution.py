"""Trusted evolutionary operators: elitist survival and the fallback offspring.

The LLM normally chooses parents, crosses and mutates (Self-Pruner); when it fails
twice, `fallback_offspring` does the same job in trusted code so the search goes on.
"""

from __future__ import annotations

import random

from autoprune.pruning.rates import RateConstraint, project


def rank(members: list[dict]) -> list[dict]:
    """Best (lowest validation perplexity) first; unevaluated members last."""
    return sorted(members, key=lambda m: (m["fitness"] is None, m["fitness"] or 0.0))


def survivors(population: list[dict], newcomer: dict, size: int) -> list[dict]:
    """(μ + 1) elitism: the `size` best of the population and the newcomer."""
    return rank(population + [newcomer])[:size]


def tournament_pick(population: list[dict], rng: random.Random, k: int = 2) -> dict:
    contenders = rng.sample(population, min(k, len(population)))
    return rank(contenders)[0]


def fallback_offspring(population: list[dict], constraint: RateConstraint, rng: random.Random,
                       *, mutation_rate: float = 0.2, sigma: float = 0.05) -> list[float]:
    """Tournament parents, uniform crossover, Gaussian mutation of some layers, projection."""
    mother = tournament_pick(population, rng)["rates"]
    father = tournament_pick(population, rng)["rates"]
    child = [m if rng.random() < 0.5 else f for m, f in zip(mother, father)]
    child = [r + rng.gauss(0.0, sigma) if rng.random() < mutation_rate else r for r in child]
    if all(abs(a - b) < 1e-9 for a, b in zip(child, mother)):
        i = rng.randrange(len(child))          # never return a parent unchanged
        child[i] += sigma if child[i] + sigma <= constraint.high else -sigma
    return project(child, constraint)


def is_duplicate(rates: list[float], members: list[dict], tolerance: float = 1e-3) -> bool:
    return any(max(abs(a - b) for a, b in zip(rates, m["rates"])) < tolerance for m in members)
