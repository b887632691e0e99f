"""The trusted finale: the winner's masks, the chosen allocation, the trusted refit, test, export.

Every choice is made on the validation fitness windows (agent/finale_allocations.py: which
allocation and its hyper-parameters). The winner's masks always come from its code through the
sandbox; trusted code then refits the surviving weights for those masks with the sequential loop
(`prune_model` with the masks fixed, `reconstruct` none | obs | exact: statistics through the
already pruned and refitted prefix). The test split is read once, here, and only for what the
result reports: the winner without the refit (uniform, and at the chosen allocation) and with it
(the exported model), next to the `prune --method` baselines and the dense model, whose test
perplexities come from the cross-run cache (autoprune.evaluators.baseline_cache) when known.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from autoprune.agent.archive import SEED_HYPOTHESES, WANDA_ID, read_source
from autoprune.agent.finale_allocations import Variant, allocation_points, choose
from autoprune.agent.finale_report import reported_rows, test_policy
from autoprune.agent.fitness import FitnessService, perplexity_of
from autoprune.agent.mask_files import load_masks
from autoprune.agent.services import CandidateRunner
from autoprune.agent.state import is_search_candidate
from autoprune.agent.tournament import paired_wins
from autoprune.errors import SandboxError
from autoprune.evaluators.baselines import BaselineEvaluator, BaselineSpec
from autoprune.pruning.apply import masks_applied

__all__ = ["Finale", "Variant", "hypothesis_statement"]


def hypothesis_statement(state: dict, cid: str) -> str:
    if cid in SEED_HYPOTHESES:
        return SEED_HYPOTHESES[cid]
    name = state["candidates"][cid].get("hypothesis", "")
    return (state.get("insights") or {}).get("hypotheses", {}).get(name, "")


class Finale:
    def __init__(self, *, model, tokenizer, calibration, stats, runner: CandidateRunner, fitness: FitnessService,
                 test_windows_fn, config, run_dir: Path, export: Any = None, baseline_cache: Any = None):
        self.model, self.tokenizer, self.calibration, self.stats = model, tokenizer, calibration, stats
        self.runner, self.fitness, self.config, self.run_dir = runner, fitness, config, Path(run_dir)
        self.test_windows_fn = test_windows_fn      # called once, here only: the test split stays unread before
        self.export = export
        self.baseline_cache = baseline_cache        # None: the user's cache (cache_root()/baselines)
        self.timings = {"sandbox": 0.0, "fitness": 0.0, "refit": 0.0, "test": 0.0, "baselines": 0.0,
                        "export": 0.0, "zeroshot": 0.0}

    # ---- pieces ----
    def _sandbox(self, source: str, layer_sparsity: Optional[dict], mode: str):
        outcome = self.runner.run(source, layer_sparsity=layer_sparsity, mode=mode)
        self.timings["sandbox"] += outcome.seconds
        if outcome.status != "ok":
            raise SandboxError(f"the winner failed in the finale ({mode}): {outcome.status}: {outcome.message}")
        return outcome

    def _validation(self, key: str, masks, level: Optional[int] = None) -> float:
        """Validation perplexity at a fitness level (top by default); masks=None: the weights as they are."""
        started = time.perf_counter()
        level = self.fitness.num_levels - 1 if level is None else level
        nlls = self.fitness.evaluate(key, None if masks is None else (lambda: masks), level)
        self.timings["fitness"] += time.perf_counter() - started
        return perplexity_of(nlls)

    def masks_for(self, source: str, variant: Variant) -> None:
        outcome = self._sandbox(source, self.runner.block_to_layer_sparsity(variant.block_sparsity), "masks")
        variant.masks, variant.group = outcome.masks, outcome.group

    def test_ppl(self, masks: Optional[dict], windows) -> float:
        from autoprune.evaluators.perplexity import perplexity

        started = time.perf_counter()
        with masks_applied(self.model, masks or {}):
            value = perplexity(self.model, windows)
        self.timings["test"] += time.perf_counter() - started
        return value

    @contextmanager
    def reconstructed(self, variant: Variant, reconstruct: Optional[str] = None):
        """Inside: the variant's masks with the surviving weights refitted by the sequential loop
        (`reconstruct`, default the config's). The dense weights are restored on the way out."""
        from autoprune.pruning.apply import restore, snapshot_weights
        from autoprune.pruning.loop import prune_model
        from autoprune.pruning.methods import PrecomputedMasks

        started = time.perf_counter()
        layer_sparsity = self.runner.block_to_layer_sparsity(variant.block_sparsity)
        snapshot = snapshot_weights(self.model, list(variant.masks))
        try:
            prune_model(self.model, self.calibration, method=PrecomputedMasks(variant.masks, layer_sparsity,
                        group=variant.group), sparsity=self.config.sparsity, pattern=self.runner.pattern,
                        reconstruct=reconstruct or self.config.reconstruct, mode="sequential", progress=False)
            self.timings["refit"] += time.perf_counter() - started
            yield
        finally:
            restore(self.model, snapshot)

    def zeroshot(self, variants: dict[str, Any]) -> Optional[dict]:
        """`--final-tasks`: lm-eval zero-shot accuracy of each variant ({name: masks, None = dense, or a
        callable returning a context manager inside which the model is that variant})."""
        if not self.config.final_tasks:
            return None
        from autoprune.evaluators.zeroshot import zeroshot_accuracy

        data_dir = Path(self.config.zeroshot_data) if self.config.zeroshot_data else None
        started, results = time.perf_counter(), {}
        for name, variant in variants.items():
            with (variant() if callable(variant) else masks_applied(self.model, variant or {})):
                results[name] = zeroshot_accuracy(self.model, self.tokenizer, list(self.config.final_tasks),
                                                  data_dir=data_dir, limit=self.config.zeroshot_limit)
        self.timings["zeroshot"] += time.perf_counter() - started
        return {"tasks": list(self.config.final_tasks), "source": str(data_dir or "hub"),
                "limit": self.config.zeroshot_limit, "results": results}

    def baselines(self, windows) -> dict[str, dict]:
        """Dense and each `final_baselines` method (uniform, sequential, as `prune --method` runs it) on
        the test windows, served from the cross-run cache when known: {name: {test_ppl, cached}}."""
        from autoprune.evaluators.baseline_cache import BaselineCache

        started = time.perf_counter()
        cache = self.baseline_cache if self.baseline_cache is not None else BaselineCache()
        evaluator = BaselineEvaluator(self.model, self.calibration, windows, cache=cache)
        pattern = self.runner.pattern
        sparsity = pattern.sparsity if pattern.structured else self.config.sparsity
        measured = {"dense": evaluator.dense()}
        for method in self.config.final_baselines:
            measured[method] = evaluator.baseline(BaselineSpec(method, sparsity, str(pattern)))
        self.timings["baselines"] += time.perf_counter() - started
        return {name: {"test_ppl": m.perplexity, "cached": m.cached} for name, m in measured.items()}

    # ---- the whole finale ----
    def run(self, state: dict) -> dict:
        candidates, order = state["candidates"], state.get("leaderboard", [])
        if not order:
            raise SandboxError("no candidate passed verification, not even the seeds: nothing to finalise")
        winner_id, top = order[0], self.fitness.num_levels - 1
        winner, wanda = candidates[winner_id], candidates.get(WANDA_ID, {})
        source = read_source(self.run_dir, winner)
        winner_masks = load_masks(self.run_dir / winner["masks_path"])
        win_nlls = self.fitness.evaluate(winner_id, lambda: winner_masks, top)
        wanda_masks = load_masks(self.run_dir / wanda["masks_path"]) if wanda.get("masks_path") else None
        wanda_nlls = self.fitness.evaluate(WANDA_ID, lambda: wanda_masks, top) if wanda_masks else None
        chosen, finalists, points = self._choose_allocation(source, winner_id, winner, winner_masks)
        refit = self.config.reconstruct
        windows = self.test_windows_fn()
        baselines = self.baselines(windows)
        test, refit_validation, exported, zeroshot = self._winner_on_test(chosen, winner_masks, state, windows,
                                                                          baselines)
        wins = paired_wins(win_nlls, wanda_nlls) if wanda_nlls else None
        return {
            "best_llm": self._best_llm(state, wanda_nlls),
            "winner": {"id": winner_id, "hypothesis": winner.get("hypothesis", ""), "level": top,
                       "statement": hypothesis_statement(state, winner_id),
                       "ppl_validation": perplexity_of(win_nlls), "nwindows": len(win_nlls), "source": source},
            "wanda": {"ppl_validation": perplexity_of(wanda_nlls) if wanda_nlls else None},
            "paired_wins_vs_wanda": wins, "beats_wanda": bool(wanda_nlls and wins > len(win_nlls) / 2
                                                              and perplexity_of(win_nlls) < perplexity_of(wanda_nlls)),
            "validation": {**{v.name: v.validation_ppl for v in finalists},
                           **({f"{chosen.name}+{refit}": refit_validation} if refit_validation else {})},
            "tuning": [{"name": v.name, "allocation": v.allocation, "hyper": v.hyper, "tuning_ppl": v.tuning_ppl,
                        "validation_ppl": v.validation_ppl} for v in points],
            "test": test, "table": reported_rows(test, chosen, refit, baselines, self.config.final_baselines),
            "test_policy": test_policy(chosen, refit, self.fitness, points),
            "test_protocol": windows.description, "test_windows": len(windows),
            "chosen_allocation": chosen.name, "refit": refit,
            "sdsa": next(({**v.hyper, "block_sparsity": v.block_sparsity} for v in finalists
                          if v.allocation == "sdsa"), None),
            "allocations": {v.name: [round(s, 4) for s in v.block_sparsity] for v in finalists},
            "export": str(exported) if exported else None, "timings": {k: round(v, 3) for k, v in self.timings.items()},
            **({"zeroshot": zeroshot} if zeroshot else {}),
        }

    def _winner_on_test(self, chosen: Variant, winner_masks: dict, state: dict, windows, baselines: dict):
        """(test dict, validation ppl after the refit, export path, zero-shot): the winner's masks alone at
        uniform (what the search bought) and at the chosen allocation, then refitted (what is exported)."""
        refit, refit_validation, exported, zeroshot = self.config.reconstruct, None, None, None
        test = {"uniform": self.test_ppl(winner_masks, windows)}
        if chosen.name != "uniform":
            test[chosen.allocation] = self.test_ppl(chosen.masks, windows)
        with (self.reconstructed(chosen) if refit != "none" else masks_applied(self.model, chosen.masks)):
            if refit != "none":
                refit_validation = self._validation(f"final-{chosen.name}+{refit}", None)
                test[f"{chosen.allocation}+{refit}"] = self.test_ppl(None, windows)
            test.update({name: b["test_ppl"] for name, b in baselines.items()})
            if self.config.export_model:
                exported = self._export(chosen, state, test, windows, refit)
            zeroshot = self.zeroshot({"winner": None})
        dense_zeroshot = self.zeroshot({"dense": None})
        if zeroshot and dense_zeroshot:
            zeroshot["results"].update(dense_zeroshot["results"])
        return test, refit_validation, exported, zeroshot

    def _choose_allocation(self, source: str, winner_id: str, winner: dict, winner_masks: dict):
        """(chosen, the best point of each allocation, every point) on the validation windows."""
        pattern, top = self.runner.pattern, self.fitness.num_levels - 1
        points = allocation_points(self.config, self.model, self.stats, structured=pattern.structured,
                                   fixed_sparsity=pattern.sparsity if pattern.structured else self.config.sparsity)

        def draw(variant: Variant) -> None:
            if variant.name == "uniform":              # the winner's own masks, already verified and stored
                variant.masks, variant.group = winner_masks, winner.get("group", "row")
            else:
                self.masks_for(source, variant)

        def score(variant: Variant, level: int) -> float:
            key = winner_id if variant.name == "uniform" else f"final-{variant.name}"
            return self._validation(key, variant.masks, level)

        chosen, finalists = choose(points, draw, score, tuning_level=max(0, top - 1), top_level=top)
        for variant in finalists:
            if variant is not chosen and variant.name != "uniform":
                variant.masks = None
        return chosen, finalists, points

    def _best_llm(self, state: dict, wanda_nlls) -> Optional[dict]:
        """The best search candidate (LLM-written, or a trusted mutation of one) against Wanda, paired on its
        highest common level."""
        candidates = state["candidates"]
        best = next((cid for cid in state.get("leaderboard", []) if is_search_candidate(candidates[cid])), None)
        if best is None:
            return None
        rec = candidates[best]
        level = str(rec.get("level", 0))
        mine, ref = rec["nll"][level], candidates.get(WANDA_ID, {}).get("nll", {}).get(level)
        return {"id": best, "origin": rec.get("origin"), "hypothesis": rec.get("hypothesis", ""),
                "level": int(level), "ppl_validation": rec.get("fitness"), "nwindows": len(mine),
                "wanda_ppl_same_windows": perplexity_of(ref) if ref else None,
                "paired_wins_vs_wanda": paired_wins(mine, ref) if ref else None}

    def _export(self, chosen: Variant, state: dict, test: dict, windows, refit: str) -> Path:
        """The model as it is now (refitted when `refit` is not none), masks applied, and its summary."""
        from autoprune.pruning.export import export_pruned_model

        started = time.perf_counter()
        summary = {"method": f"agent winner {state['leaderboard'][0]}", "allocation": chosen.name,
                   "allocation_hyper": chosen.hyper, "reconstruct": refit, "reconstructed": refit != "none",
                   "target_sparsity": self.config.sparsity, "pattern": self.config.pattern,
                   "block_sparsity": chosen.block_sparsity, "perplexity": {"test": dict(test)},
                   "protocol": {"calibration": self.calibration.description, "test": windows.description}}
        with masks_applied(self.model, chosen.masks):
            out = export_pruned_model(self.model, self.tokenizer, self.run_dir / "model", summary)
        self.timings["export"] += time.perf_counter() - started
        return out
