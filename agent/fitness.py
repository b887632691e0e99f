"""Trusted search-time fitness: per-window NLL of the masked model on validation windows.

The evaluator keeps the model's dense weights resident: for one candidate it
masks the target linears in place, measures the NLL of each fitness window,
and restores the dense values (also on errors). The windows come from the
second half of the validation text (`autoprune.data.fitness_windows`),
disjoint from calibration; the test split is never read here.

Multi-fidelity: level i uses the first `levels[i]` windows, so every candidate
at a level is measured on the same windows and a promotion only computes the
windows it lacks. Results are cached per (candidate, window).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import torch

from autoprune.data import WindowSet
from autoprune.evaluators.perplexity import window_nlls
from autoprune.pruning.apply import masks_applied

MaskLoader = Callable[[], Mapping[str, torch.Tensor]]


def perplexity_of(nlls: Sequence[float]) -> float:
    mean = sum(nlls) / len(nlls)
    return math.exp(mean) if mean < 700 else float("inf")


class FitnessService:
    """Per-window validation NLLs of masked variants of one resident dense model."""

    def __init__(self, model: torch.nn.Module, windows: WindowSet, levels: Sequence[int], *,
                 batch_size: int = 1):
        if len(windows) < max(levels):
            levels = [min(n, len(windows)) for n in levels]
            levels = sorted(set(levels))
        self.model, self.windows, self.levels, self.batch_size = model, windows, list(levels), batch_size
        self._cache: dict[tuple[str, int], float] = {}

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def describe(self) -> str:
        return f"{self.windows.description}; fidelity levels {self.levels} windows"

    def prime(self, cid: str, nlls: Sequence[float]) -> None:
        """Seed the cache from checkpointed state (a resumed run never recomputes)."""
        for i, value in enumerate(nlls):
            self._cache[(cid, i)] = float(value)

    def evaluate(self, cid: str, load_masks: Optional[MaskLoader], level: int) -> list[float]:
        """NLLs of the first `levels[level]` windows; `load_masks=None` means the dense model."""
        count = self.levels[level]
        missing = [i for i in range(count) if (cid, i) not in self._cache]
        if missing:
            subset = WindowSet(self.windows.ids[missing], self.windows.description)
            if load_masks is None:
                values = window_nlls(self.model, subset, batch_size=self.batch_size)
            else:
                with masks_applied(self.model, load_masks()):
                    values = window_nlls(self.model, subset, batch_size=self.batch_size)
            for i, value in zip(missing, values.tolist()):
                self._cache[(cid, i)] = float(value)
        return [self._cache[(cid, i)] for i in range(count)]
