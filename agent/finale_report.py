"""What the finale's result says about its test evaluations: the reported rows and how they were chosen.

Rows, in order: the winner's masks alone at uniform (what the search bought), at the chosen
allocation (what the allocation bought), refitted (what the refit bought: the exported model),
then the `prune --method` baselines (uniform, sequential, their own weight updates) and dense.
The report (autoprune/reports/sections.py) renders them with the ratios to SparseGPT and ALPS.
"""

from __future__ import annotations

# The weight update a baseline makes itself (`prune --method NAME --reconstruct none` keeps it).
OWN_REFIT = {"sparsegpt": "obs", "alps": "exact"}


def row(variant: str, refit: str, allocation: str, test_ppl, **extra) -> dict:
    return {"variant": variant, "refit": refit, "allocation": allocation, "test_ppl": test_ppl, **extra}


def reported_rows(test: dict, chosen, refit: str, baselines: dict, methods) -> list[dict]:
    rows = [row("winner", "none", "uniform", test["uniform"],
                exported=refit == "none" and chosen.name == "uniform")]
    if chosen.name != "uniform":
        rows.append(row("winner", "none", chosen.name, test[chosen.allocation], exported=refit == "none"))
    if refit != "none":
        rows.append(row("winner", refit, chosen.name, test[f"{chosen.allocation}+{refit}"], exported=True))
    for method in methods:
        rows.append(row(method, OWN_REFIT.get(method, "none"), "uniform", baselines[method]["test_ppl"],
                        cached=baselines[method]["cached"]))
    rows.append(row("dense", "-", "-", baselines["dense"]["test_ppl"], cached=baselines["dense"]["cached"]))
    return rows


def test_policy(chosen, refit: str, fitness, points: list) -> str:
    allocations = " / ".join(dict.fromkeys(p.allocation for p in points))
    return (f"The allocation ({chosen.name}, best of {len(points)} grid points over {allocations}) was "
            f"chosen on validation ({fitness.describe()}); the refit ({refit}) is the run's setting. The test split "
            "was read only for the variants reported: the winner without the refit (uniform and the chosen "
            "allocation), with it, and the baselines and dense model, those from the cross-run cache when known.")
