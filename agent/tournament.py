"""Paired comparisons on common windows, Bradley-Terry ratings, successive halving.

Candidate A beats B on a window when its NLL there is lower (a tie is half a win
each). Comparing on the *same* windows removes the between-window variance that
dominates a raw mean-NLL ranking, so few windows already separate candidates.
Ratings are Bradley-Terry strengths fitted by the classic MM iteration, with one
virtual tie against every opponent as a prior (so a candidate that always wins
gets a finite rating), reported on the Elo scale (400 · log10, centred on 1500).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Sequence

ELO_SCALE = 400.0 / math.log(10.0)
ELO_CENTRE = 1500.0


def paired_wins(a: Sequence[float], b: Sequence[float]) -> float:
    """Windows on which `a` has the lower NLL (ties count half); both on the same windows."""
    n = min(len(a), len(b))
    return sum(1.0 if a[i] < b[i] else 0.5 if a[i] == b[i] else 0.0 for i in range(n))


def win_matrix(nlls: Mapping[str, Sequence[float]]) -> tuple[list[str], list[list[float]]]:
    ids = sorted(nlls)
    wins = [[0.0] * len(ids) for _ in ids]
    for i, j in combinations(range(len(ids)), 2):
        w = paired_wins(nlls[ids[i]], nlls[ids[j]])
        n = min(len(nlls[ids[i]]), len(nlls[ids[j]]))
        wins[i][j], wins[j][i] = w, n - w
    return ids, wins


def bradley_terry(nlls: Mapping[str, Sequence[float]], *, iterations: int = 200,
                  prior_ties: float = 1.0) -> dict[str, float]:
    """Elo-scaled Bradley-Terry ratings of candidates compared window by window."""
    ids, wins = win_matrix(nlls)
    if len(ids) < 2:
        return {cid: ELO_CENTRE for cid in ids}
    k = len(ids)
    # The prior: `prior_ties` drawn games against every opponent (half a win each way).
    w = [[wins[i][j] + (prior_ties / 2 if i != j else 0.0) for j in range(k)] for i in range(k)]
    strength = [1.0] * k
    for _ in range(iterations):
        updated = []
        for i in range(k):
            total_wins = sum(w[i][j] for j in range(k) if j != i)
            denom = sum((w[i][j] + w[j][i]) / (strength[i] + strength[j]) for j in range(k) if j != i)
            updated.append(total_wins / denom if denom > 0 else strength[i])
        geo = math.exp(sum(math.log(s) for s in updated) / k)   # fix the scale: geometric mean 1
        strength = [s / geo for s in updated]
    return {cid: ELO_CENTRE + ELO_SCALE * math.log(s) for cid, s in zip(ids, strength)}


@dataclass(frozen=True)
class LevelResult:
    level: int
    ratings: dict[str, float]
    promoted: list[str]


def successive_halving(nlls_by_level: Mapping[int, Mapping[str, Sequence[float]]], *, num_levels: int,
                       top_fraction: float = 0.5, always_promote: Sequence[str] = ()) -> list[LevelResult]:
    """Rate each level's field; promote its top fraction not already at the next level.

    `nlls_by_level[level][cid]` holds the per-window NLLs of candidates evaluated
    at that level; levels run 0..num_levels-1 and the last one promotes nobody. `always_promote` (the Wanda
    reference) climbs every level so every winner is compared with it.
    """
    results = []
    for level in sorted(nlls_by_level):
        field = nlls_by_level[level]
        ratings = bradley_terry(field)
        promoted: list[str] = []
        if level + 1 < num_levels:
            above = nlls_by_level.get(level + 1, {})
            ranked = sorted(field, key=lambda c: (-ratings[c], c))
            keep = max(1, math.ceil(len(ranked) * top_fraction))
            chosen = ranked[:keep] + [c for c in always_promote if c in field]
            promoted = [c for c in dict.fromkeys(chosen) if c not in above]
        results.append(LevelResult(level, ratings, promoted))
    return results


def leaderboard(nlls_by_level: Mapping[int, Mapping[str, Sequence[float]]],
                ratings_by_level: Mapping[int, Mapping[str, float]]) -> list[str]:
    """Best first: highest level reached, then rating at that level, then mean NLL."""
    best_level: dict[str, int] = {}
    for level in sorted(nlls_by_level):
        for cid in nlls_by_level[level]:
            best_level[cid] = level

    def key(cid: str):
        level = best_level[cid]
        values = nlls_by_level[level][cid]
        return (-level, -ratings_by_level[level].get(cid, ELO_CENTRE), sum(values) / len(values), cid)

    return sorted(best_level, key=key)
