"""tournament: paired Bradley-Terry ratings per fidelity level, successive halving, elite archive."""

from __future__ import annotations

from pathlib import Path

from autoprune.agent.archive import WANDA_ID, select_elite
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState
from autoprune.agent.tournament import leaderboard, successive_halving


def nlls_by_level(candidates: dict) -> dict[int, dict[str, list[float]]]:
    field: dict[int, dict[str, list[float]]] = {}
    for cid, rec in candidates.items():
        if rec.get("status") != "ok":
            continue
        for level, values in rec.get("nll", {}).items():
            field.setdefault(int(level), {})[cid] = values
    return field


def standings(order: list[str], candidates: dict, ratings: dict[int, dict[str, float]]) -> list[dict]:
    rows = []
    for rank, cid in enumerate(order, 1):
        rec = candidates[cid]
        level = rec.get("level", -1)
        rows.append({"id": cid, "rank": rank, "level": level, "rating": round(ratings[level].get(cid, 0.0), 2),
                     "ppl": rec.get("fitness"), "hypothesis": rec.get("hypothesis", "")})
    return rows


def drop_masks(candidates: dict, keep: set[str], run_dir: Path) -> dict:
    """Delete mask files of candidates far from the top: they will not be promoted or finalised."""
    out = dict(candidates)
    for cid, rec in candidates.items():
        if rec.get("masks_path") and cid not in keep:
            (Path(run_dir) / rec["masks_path"]).unlink(missing_ok=True)
            out[cid] = {**rec, "masks_path": None}
    return out


def tournament(state: AgentState, services: AgentServices) -> dict:
    candidates = state.get("candidates", {})
    field = nlls_by_level(candidates)
    if not field:
        return {"leaderboard": [], "archive": [], "ratings": {}}
    results = successive_halving(field, num_levels=services.fitness.num_levels, always_promote=[WANDA_ID])
    ratings = {r.level: r.ratings for r in results}
    for r in results:
        services.trace.emit("rating", level=r.level, ratings={c: round(v, 2) for c, v in r.ratings.items()})
    order = leaderboard(field, ratings)
    archive = select_elite(order, services.config.elite_k)
    keep = set(order[: max(2 * services.config.elite_k, 10)]) | {WANDA_ID}
    candidates = drop_masks(candidates, keep, services.run_dir)
    promoted = [[cid, r.level + 1] for r in results for cid in r.promoted if candidates[cid].get("masks_path")]
    services.trace.emit("tournament", generation=int(state.get("generation", 0)),
                        standings=standings(order, candidates, ratings), promoted=promoted, archive=archive)
    return {"candidates": candidates, "ratings": {str(k): v for k, v in ratings.items()}, "leaderboard": order,
            "archive": archive, "pending_evals": promoted}
