"""The trusted finale: winner at full fidelity, allocations, test evaluation, export.

All choices (SDSA's λ, which allocation is exported) are made on the
validation fitness windows; the test split is read only to report the chosen
variants next to Wanda and the dense model. Masks always come from the
winner's code through the sandbox (the profile mode gives the per-layer score
skewness SDSA needs); trusted code verifies, allocates and evaluates.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from autoprune.agent.archive import SEED_HYPOTHESES, SEED_SOURCES, WANDA_ID, read_source
from autoprune.agent.fitness import FitnessService, perplexity_of
from autoprune.pruning.apply import masks_applied
from autoprune.agent.mask_files import load_masks
from autoprune.agent.services import CandidateRunner
from autoprune.agent.state import is_search_candidate
from autoprune.agent.tournament import paired_wins
from autoprune.errors import SandboxError
from autoprune.pruning.allocators import allocate_sparsity
from autoprune.pruning.loop import block_param_counts, plan_block_sparsity


def block_profiles(profile: dict, bundle) -> list[dict]:
    """Per-block score statistics from the sandbox's profile: its own per-block section
    (`{"layers": ..., "blocks": {index: stats}}`), else numel-weighted means of the layers."""
    if isinstance(profile.get("blocks"), dict):
        blocks = profile["blocks"]
        return [dict(blocks[str(i)]) for i in sorted({spec.layer_index for spec in bundle.layers})]
    return block_profiles_from_layers(profile.get("layers", profile), bundle)


def block_profiles_from_layers(profile: dict[str, dict], bundle) -> list[dict]:
    """Per-block numel-weighted means of the per-layer score statistics the sandbox returned."""
    sums: dict[int, dict[str, float]] = {}
    for spec in bundle.layers:
        stats = profile.get(spec.name, {})
        acc = sums.setdefault(spec.layer_index, {"skewness": 0.0, "outlier_ratio": 0.0, "numel": 0.0})
        for key in ("skewness", "outlier_ratio"):
            acc[key] += float(stats.get(key, 0.0)) * spec.numel
        acc["numel"] += spec.numel
    return [{k: sums[i][k] / max(sums[i]["numel"], 1.0) for k in ("skewness", "outlier_ratio")}
            for i in sorted(sums)]


def hypothesis_statement(state: dict, cid: str) -> str:
    if cid in SEED_HYPOTHESES:
        return SEED_HYPOTHESES[cid]
    name = state["candidates"][cid].get("hypothesis", "")
    return (state.get("insights") or {}).get("hypotheses", {}).get(name, "")


@dataclass
class Variant:
    name: str
    block_sparsity: list[float]
    masks: Optional[dict[str, torch.Tensor]] = None
    group: str = "row"
    validation_ppl: Optional[float] = None
    test_ppl: Optional[float] = None
    hyper: dict = field(default_factory=dict)


class Finale:
    def __init__(self, *, model, tokenizer, calibration, stats, runner: CandidateRunner, fitness: FitnessService,
                 test_windows_fn, config, run_dir: Path, export: Any = None):
        self.model, self.tokenizer, self.calibration, self.stats = model, tokenizer, calibration, stats
        self.runner, self.fitness, self.config, self.run_dir = runner, fitness, config, Path(run_dir)
        self.test_windows_fn = test_windows_fn      # called once, here only: the test split stays unread before
        self.export = export
        self.timings = {"sandbox": 0.0, "fitness": 0.0, "test": 0.0, "export": 0.0, "zeroshot": 0.0}

    # ---- pieces ----
    def _sandbox(self, source: str, layer_sparsity: Optional[dict], mode: str):
        outcome = self.runner.run(source, layer_sparsity=layer_sparsity, mode=mode)
        self.timings["sandbox"] += outcome.seconds
        if outcome.status != "ok":
            raise SandboxError(f"the winner failed in the finale ({mode}): {outcome.status}: {outcome.message}")
        return outcome

    def _validation(self, key: str, masks) -> float:
        started = time.perf_counter()
        nlls = self.fitness.evaluate(key, lambda: masks, self.fitness.num_levels - 1)
        self.timings["fitness"] += time.perf_counter() - started
        return perplexity_of(nlls)

    def allocations(self, source: str) -> list[Variant]:
        target, blocks = self.config.sparsity, len(block_param_counts(self.model))
        variants = [Variant("uniform", [self.runner.pattern.sparsity if self.runner.pattern.structured
                                        else target] * blocks)]
        if self.runner.pattern.structured:
            return variants     # N:M fixes every layer's sparsity
        owl, _ = plan_block_sparsity(self.model, target, "owl", stats=self.stats)
        variants.append(Variant("owl", owl, hyper={"lam": 0.08, "M": 5.0}))
        profile = self._sandbox(source, None, "profile").profile or {}
        profiles = block_profiles(profile, self.runner.bundle)
        params = block_param_counts(self.model)
        for lam in self.config.sdsa_lambdas:
            ratios = allocate_sparsity("sdsa", target, profiles, params, lam=lam, source="score")
            variants.append(Variant(f"sdsa(λ={lam:g})", ratios, hyper={"lam": lam, "profiles": profiles}))
        return variants

    def masks_for(self, source: str, variant: Variant) -> None:
        outcome = self._sandbox(source, self.runner.block_to_layer_sparsity(variant.block_sparsity), "masks")
        variant.masks, variant.group = outcome.masks, outcome.group

    def test_ppl(self, masks: Optional[dict], windows) -> float:
        from autoprune.evaluators.perplexity import perplexity

        started = time.perf_counter()
        if masks is None:
            value = perplexity(self.model, windows)
        else:
            with masks_applied(self.model, masks):
                value = perplexity(self.model, windows)
        self.timings["test"] += time.perf_counter() - started
        return value

    def zeroshot(self, variants: dict[str, Optional[dict]]) -> Optional[dict]:
        """`--final-tasks`: lm-eval zero-shot accuracy of each variant ({name: masks or None = dense})."""
        if not self.config.final_tasks:
            return None
        from autoprune.evaluators.zeroshot import zeroshot_accuracy

        data_dir = Path(self.config.zeroshot_data) if self.config.zeroshot_data else None
        started, results = time.perf_counter(), {}
        for name, masks in variants.items():
            with masks_applied(self.model, masks or {}):
                results[name] = zeroshot_accuracy(self.model, self.tokenizer, list(self.config.final_tasks),
                                                  data_dir=data_dir, limit=self.config.zeroshot_limit)
        self.timings["zeroshot"] = time.perf_counter() - started
        return {"tasks": list(self.config.final_tasks), "source": str(data_dir or "hub"),
                "limit": self.config.zeroshot_limit, "results": results}

    @contextmanager
    def reconstructed(self, variant: Variant):
        """Inside: the variant's masks with an OBS update of the surviving weights (DESIGN §5).
        The dense weights are restored on the way out."""
        from autoprune.pruning.apply import restore, snapshot_weights
        from autoprune.pruning.loop import prune_model
        from autoprune.pruning.methods import PrecomputedMasks

        layer_sparsity = self.runner.block_to_layer_sparsity(variant.block_sparsity)
        snapshot = snapshot_weights(self.model, list(variant.masks))
        try:
            prune_model(self.model, self.calibration, method=PrecomputedMasks(variant.masks, layer_sparsity,
                        group=variant.group), sparsity=self.config.sparsity, pattern=self.runner.pattern,
                        reconstruct=True, progress=False)
            yield
        finally:
            restore(self.model, snapshot)

    def wanda_owl_ppl(self, variants: list[Variant], windows) -> Optional[float]:
        """Wanda with OWL's allocation: the stronger baseline the winner must also beat."""
        owl = next((v for v in variants if v.name == "owl"), None)
        if owl is None:
            return None
        reference = Variant("wanda_owl", owl.block_sparsity)
        self.masks_for(SEED_SOURCES[WANDA_ID], reference)
        return self.test_ppl(reference.masks, windows)

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
        variants = self.allocations(source)
        for variant in variants:
            if variant.name == "uniform":
                variant.masks, variant.group = winner_masks, winner.get("group", "row")
            else:
                self.masks_for(source, variant)
            key = winner_id if variant.name == "uniform" else f"final-{variant.name}"
            variant.validation_ppl = self._validation(key, variant.masks)
        sdsa = [v for v in variants if v.name.startswith("sdsa")]
        best_sdsa = min(sdsa, key=lambda v: v.validation_ppl) if sdsa else None
        reported = [v for v in variants if not v.name.startswith("sdsa")] + ([best_sdsa] if best_sdsa else [])
        chosen = min(reported, key=lambda v: v.validation_ppl)
        windows = self.test_windows_fn()
        test = {"dense": self.test_ppl(None, windows)}
        if wanda_masks is not None:
            test["wanda_uniform"] = self.test_ppl(wanda_masks, windows)
        for variant in reported:
            same_as_wanda = variant.masks is winner_masks and winner_id == WANDA_ID and "wanda_uniform" in test
            variant.test_ppl = test[variant.name.split("(")[0]] = (
                test["wanda_uniform"] if same_as_wanda else self.test_ppl(variant.masks, windows))
        if wanda_masks is not None:
            test["wanda_owl"] = test.get("owl") if winner_id == WANDA_ID else self.wanda_owl_ppl(variants, windows)
        zeroshot = self.zeroshot({"winner": chosen.masks, "wanda_uniform": wanda_masks, "dense": None})
        exported = self._finish(chosen, state, test, windows)
        wins = paired_wins(win_nlls, wanda_nlls) if wanda_nlls else None
        return {
            "best_llm": self._best_llm(state, wanda_nlls),
            "winner": {"id": winner_id, "hypothesis": winner.get("hypothesis", ""), "level": top,
                       "statement": hypothesis_statement(state, winner_id),
                       "ppl_validation": perplexity_of(win_nlls), "nwindows": len(win_nlls), "source": source},
            "wanda": {"ppl_validation": perplexity_of(wanda_nlls) if wanda_nlls else None},
            "paired_wins_vs_wanda": wins, "beats_wanda": bool(wanda_nlls and wins > len(win_nlls) / 2
                                                              and perplexity_of(win_nlls) < perplexity_of(wanda_nlls)),
            "validation": {v.name: v.validation_ppl for v in variants},
            "test": test, "test_protocol": windows.description, "test_windows": len(windows),
            "chosen_allocation": chosen.name,
            "sdsa": {"lam": best_sdsa.hyper["lam"], "block_sparsity": best_sdsa.block_sparsity,
                     "profiles": best_sdsa.hyper["profiles"]} if best_sdsa else None,
            "allocations": {v.name: [round(s, 4) for s in v.block_sparsity] for v in variants},
            "export": str(exported) if exported else None, "timings": {k: round(v, 3) for k, v in self.timings.items()},
            **({"zeroshot": zeroshot} if zeroshot else {}),
        }

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

    def _finish(self, chosen: Variant, state: dict, test: dict, windows) -> Optional[Path]:
        """Test the reconstructed variant when asked (it is then what gets exported), and export."""
        if not self.config.reconstruct:
            return self._export(chosen, state, test, windows) if self.config.export_model else None
        with self.reconstructed(chosen):
            test[f"{chosen.name.split('(')[0]}_reconstructed"] = self.test_ppl(None, windows)
            if self.config.export_model:
                return self._export(chosen, state, test, windows, reconstructed=True)
        return None

    def _export(self, chosen: Variant, state: dict, test: dict, windows, *, reconstructed: bool = False) -> Path:
        from autoprune.pruning.export import export_pruned_model

        started = time.perf_counter()
        summary = {"method": f"agent winner {state['leaderboard'][0]}", "allocation": chosen.name,
                   "reconstructed": reconstructed,
                   "target_sparsity": self.config.sparsity, "pattern": self.config.pattern,
                   "block_sparsity": chosen.block_sparsity, "perplexity": {"test": test},
                   "protocol": {"calibration": self.calibration.description, "test": windows.description}}
        with masks_applied(self.model, chosen.masks):
            out = export_pruned_model(self.model, self.tokenizer, self.run_dir / "model", summary)
        self.timings["export"] += time.perf_counter() - started
        return out
