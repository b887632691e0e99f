"""Test perplexities of the dense model and of the built-in baselines, through the cross-run cache.

A baseline is exactly what `autoprune-agent prune --method NAME` computes (the one layer loop,
`prune_model`, on the given calibration windows), measured on the given test windows; the model's
dense weights are put back afterwards. On a cache hit nothing is pruned or evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from autoprune.evaluators.baseline_cache import BaselineCache, baseline_key, dense_key, model_fields


@dataclass(frozen=True)
class BaselineSpec:
    method: str                       # a built-in `prune --method` name (autoprune.pruning.choices)
    sparsity: float
    pattern: str = "unstructured"
    allocation: str = "uniform"
    reconstruct: str = "none"
    mode: str = "sequential"

    @property
    def label(self) -> str:
        extra = "" if self.reconstruct == "none" else f"+{self.reconstruct}"
        return self.method + extra + ("" if self.allocation == "uniform" else f" ({self.allocation})")


@dataclass
class Measured:
    perplexity: float
    cached: bool


class BaselineEvaluator:
    """Dense and baseline test perplexities of one resident model on fixed calibration / test windows."""

    def __init__(self, model, calibration, test, *, cache: Optional[BaselineCache] = None, progress: bool = False,
                 notes: Optional[dict] = None):
        self.model, self.calibration, self.test = model, calibration, test
        self.cache = cache if cache is not None else BaselineCache()
        self.progress, self.notes = progress, notes or {}
        self._model_info: Optional[dict] = None

    @property
    def model_info(self) -> dict:
        """Digest of the dense weights, taken once (before anything is pruned)."""
        if self._model_info is None:
            self._model_info = model_fields(self.model)
        return self._model_info

    def dense(self) -> Measured:
        from autoprune.evaluators.perplexity import perplexity

        value, cached = self.cache.perplexity(dense_key(self.model_info, self.test),
                                              lambda: perplexity(self.model, self.test, show_progress=self.progress),
                                              notes=self.notes)
        return Measured(value, cached)

    def baseline(self, spec: BaselineSpec) -> Measured:
        key = baseline_key(self.model_info, self.test, self.calibration, method=spec.method, sparsity=spec.sparsity,
                           pattern=spec.pattern, allocation=spec.allocation, reconstruct=spec.reconstruct,
                           mode=spec.mode)
        value, cached = self.cache.perplexity(key, lambda: self._prune_and_measure(spec), notes=self.notes)
        return Measured(value, cached)

    def _prune_and_measure(self, spec: BaselineSpec) -> float:
        from autoprune.evaluators.perplexity import perplexity
        from autoprune.pruning.apply import restore, snapshot_weights
        from autoprune.pruning.calibration import target_linears
        from autoprune.pruning.choices import builtin_method
        from autoprune.pruning.loop import prune_model

        snapshot = snapshot_weights(self.model, list(target_linears(self.model)))
        try:
            prune_model(self.model, self.calibration, method=builtin_method(spec.method), sparsity=spec.sparsity,
                        pattern=spec.pattern, allocation=spec.allocation, mode=spec.mode,
                        reconstruct=spec.reconstruct, progress=self.progress)
            return perplexity(self.model, self.test, show_progress=self.progress)
        finally:
            restore(self.model, snapshot)
