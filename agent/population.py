"""A population that keeps exploring: MAP-Elites over feature cells of the expression grammar.

For budgets of tens to hundreds of candidates, islands (FunSearch) would each hold a handful;
a MAP-Elites grid (OpenEvolve) keeps diversity with one rule instead: every cell of a small
feature grid keeps its best candidate, and parents are drawn uniformly over the occupied
cells, not from the top of one leaderboard, so a lineage that is not the current best still
gets offspring. A cell is (the statistics used, the transform family, a depth term or not),
read from the candidate's ingredients (agent/evidence.py). The novelty filter is on ranking
signatures (agent/rank_equivalence.py): a proposal that ranks weights like anything already
written is never sent, and proposals that open an empty cell are preferred.

"Best in a cell" follows the tournament's leaderboard (paired ratings per fidelity level), the
one order of quality the run has; a verified candidate not on it ranks after those that are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from autoprune.agent.archive import read_source
from autoprune.agent.evidence import Ingredient, ingredients
from autoprune.agent.expression import expression_of, wrap_expression

Cell = tuple[tuple[str, ...], str, bool]


def cell_of(parts: frozenset[Ingredient]) -> Cell:
    """(statistics, transform family, has a depth term) of a candidate's ingredients."""
    stats = tuple(sorted(i.value for i in parts if i.kind == "stat"))
    transforms = sorted(i.value for i in parts if i.kind == "transform")
    family = "+".join(transforms) if transforms else "plain"
    return stats, family, any(i.kind == "depth" for i in parts)


def describe_cell(cell: Cell) -> str:
    stats, family, depth = cell
    return f"{'/'.join(stats) or 'no statistic'} | {family}{' | depth' if depth else ''}"


@dataclass(frozen=True)
class Member:
    cid: str
    expression: str
    cell: Cell


@dataclass
class Population:
    """Cell -> its elite (best first within the cell), from the run's verified candidates."""

    elites: dict[Cell, Member]
    members: int

    @classmethod
    def from_run(cls, candidates: Mapping[str, Mapping], sources: Mapping[str, str],
                 leaderboard: Sequence[str]) -> "Population":
        order = {cid: rank for rank, cid in enumerate(leaderboard)}
        verified = sorted((cid for cid, rec in candidates.items() if rec.get("status") == "ok" and cid in sources),
                          key=lambda cid: (order.get(cid, len(order)), cid))
        elites: dict[Cell, Member] = {}
        count = 0
        for cid in verified:
            expression, parts = expression_of(sources[cid]), ingredients(sources[cid])
            if not expression or parts is None:
                continue                    # only one-line metrics can be parents of a mutation
            count += 1
            cell = cell_of(parts)
            elites.setdefault(cell, Member(cid, expression, cell))
        return cls(elites, count)

    def cells(self) -> list[Cell]:
        return list(self.elites)

    def parents(self, rng: random.Random) -> list[Member]:
        """Every cell's elite in a random order: the first is MAP-Elites' parent (a uniformly random
        occupied cell), the others stand by when its mutations were all tested already."""
        cells = sorted(self.elites)
        rng.shuffle(cells)
        return [self.elites[cell] for cell in cells]

    def diverse_elite(self, leaderboard: Sequence[str], k: int) -> list[str]:
        """Up to k ids for the prompt's examples: the leaderboard's best first, one per cell."""
        ids = {m.cid for m in self.elites.values()}
        chosen = [cid for cid in leaderboard if cid in ids][:k]
        return chosen + [cid for cid in leaderboard if cid not in chosen][: k - len(chosen)]

    def opens_cell(self, expression: str) -> bool:
        """The expression would land in a cell nobody occupies yet (what the novelty preference asks)."""
        parts = ingredients(wrap_expression(expression))
        return parts is not None and cell_of(parts) not in self.elites



def verified_sources(candidates: Mapping[str, Mapping], run_dir: Path) -> dict[str, str]:
    """Source text of every verified candidate whose file is still there (read, never run)."""
    return {cid: read_source(run_dir, rec) for cid, rec in candidates.items()
            if rec.get("status") == "ok" and rec.get("path") and (Path(run_dir) / str(rec["path"])).is_file()}


def population_of(state: Mapping, run_dir: Path) -> Population:
    """The run's population from its checkpointed state and the candidates' source files."""
    candidates = state.get("candidates", {})
    return Population.from_run(candidates, verified_sources(candidates, run_dir), state.get("leaderboard", []))
