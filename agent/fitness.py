"""Trusted search-time fitness: per-window NLL of the masked model on validation windows.

The evaluator keeps the model's dense weights resident: for one candidate it
masks the target linears in place, refits the kept weights for the mask (`refit`:
none | obs | exact, one-shot with the dense calibration XᵀX, as the user's pruned model is
refitted: `autoprune/pruning/mask_refit.py`), measures the NLL of each fitness window, and
restores the dense values (also on errors). A candidate's weights are refitted once per
call that lacks windows (a promotion refits again, then measures only the new windows);
the mask-independent Hessian factors once per layer input and run. The windows come from
the second half of the validation text (`autoprune.data.fitness_windows`), disjoint from
calibration; the test split is never read here.

Multi-fidelity: level i uses the first `levels[i]` windows, so every candidate
at a level is measured on the same windows and a promotion only computes the
windows it lacks. Results are cached per (candidate, window). NLLs a parallel
worker measured count only through `accept_claimed`, which recomputes some of
them here first (see agent/executors.py for which).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence

import torch

from autoprune.data import WindowSet
from autoprune.evaluators.perplexity import window_nlls
from autoprune.pruning.choices import reconstruction_name
from autoprune.pruning.mask_refit import HessianFactors, refitted

MaskLoader = Callable[[], Mapping[str, torch.Tensor]]


class FitnessMismatch(ValueError):
    """NLLs claimed by a worker disagree with the host's own measurement (or are malformed)."""


def perplexity_of(nlls: Sequence[float]) -> float:
    mean = sum(nlls) / len(nlls)
    return math.exp(mean) if mean < 700 else float("inf")


class FitnessService:
    """Per-window validation NLLs of masked variants of one resident dense model."""

    def __init__(self, model: torch.nn.Module, windows: WindowSet, levels: Sequence[int], *,
                 batch_size: int = 1, refit: str = "none", stats: Optional[Mapping] = None):
        """`refit`: none | obs | exact; a refit needs `stats` with XᵀX of every target linear
        (`collect_activation_stats(..., with_gram=True)` on the dense model)."""
        if len(windows) < max(levels):
            levels = [min(n, len(windows)) for n in levels]
            levels = sorted(set(levels))
        self.model, self.windows, self.levels, self.batch_size = model, windows, list(levels), batch_size
        self.refit = reconstruction_name(refit)
        self.factors = HessianFactors.from_stats(stats or {}) if self.refit != "none" else None
        if self.factors is not None and not self.factors.owner:
            raise ValueError(f"refit {self.refit!r} needs the calibration statistics with XᵀX")
        self.last_timings: dict[str, float] = {}        # refit_s / forward_s of the last computation
        self._cache: dict[tuple[str, int], float] = {}

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def describe(self) -> str:
        refit = "" if self.refit == "none" else f"; kept weights refitted ({self.refit}, one-shot, dense XᵀX)"
        return f"{self.windows.description}; fidelity levels {self.levels} windows{refit}"

    def prime(self, cid: str, nlls: Sequence[float]) -> None:
        """Seed the cache from checkpointed state (a resumed run never recomputes)."""
        for i, value in enumerate(nlls):
            self._cache[(cid, i)] = float(value)

    def evaluate(self, cid: str, load_masks: Optional[MaskLoader], level: int) -> list[float]:
        """NLLs of the first `levels[level]` windows; `load_masks=None` means the dense model."""
        count = self.levels[level]
        self._compute(cid, load_masks, [i for i in range(count) if (cid, i) not in self._cache])
        return [self._cache[(cid, i)] for i in range(count)]

    def accept_claimed(self, cid: str, load_masks: MaskLoader, claimed: Sequence[float], level: int,
                       checked: Sequence[int], *, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> list[float]:
        """Accept NLLs measured elsewhere (a parallel worker) for `level`'s windows once the windows
        `checked` recomputed here agree; raise FitnessMismatch otherwise. The accepted values are cached."""
        count = self.levels[level]
        if not isinstance(claimed, (list, tuple)) or len(claimed) != count or not all(
                isinstance(v, float) and math.isfinite(v) for v in claimed):
            raise FitnessMismatch(f"expected {count} finite window NLLs")
        if any(not 0 <= i < count for i in checked):
            raise ValueError(f"checked windows {list(checked)} are not among level {level}'s {count}")
        host = dict(zip(checked, self._compute(cid, load_masks, list(checked))))
        for i in checked:
            if not math.isclose(claimed[i], host[i], rel_tol=rel_tol, abs_tol=abs_tol):
                raise FitnessMismatch(f"window {i}: NLL {claimed[i]:.6g} claimed, {host[i]:.6g} on the host")
        accepted = [host.get(i, float(v)) for i, v in enumerate(claimed)]
        self.prime(cid, accepted)
        return accepted

    def _compute(self, cid: str, load_masks: Optional[MaskLoader], indices: list[int]) -> list[float]:
        """NLLs of the windows `indices` (cached under `cid`); the candidate's masks are refitted
        once for all of them."""
        self.last_timings = {"refit_s": 0.0, "forward_s": 0.0}
        if indices:
            subset = WindowSet(self.windows.ids[indices], self.windows.description)
            started = time.perf_counter()
            if load_masks is None:
                values = window_nlls(self.model, subset, batch_size=self.batch_size)
            else:
                with refitted(self.model, load_masks(), self.factors, self.refit):
                    swapped = time.perf_counter()
                    self.last_timings["refit_s"] = swapped - started
                    values = window_nlls(self.model, subset, batch_size=self.batch_size)
                started = swapped
            self.last_timings["forward_s"] = time.perf_counter() - started
            for i, value in zip(indices, values.tolist()):
                self._cache[(cid, i)] = float(value)
        return [self._cache[(cid, i)] for i in indices]
