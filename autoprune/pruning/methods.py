"""Shapes shared by the loop and its callers: layer pruners, precomputed masks, results."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

from torch import Tensor

from autoprune.errors import BadInputError
from autoprune.pruning.masks import SparsityPattern
from autoprune.pruning.stats import ActivationStats


@runtime_checkable
class LayerPruner(Protocol):
    """Chooses a mask and updates the weights together (SparseGPT)."""

    name: str
    group: str
    needs_gram: bool
    needs_grad: bool

    def prune_layer(self, W: Tensor, X: ActivationStats, sparsity: float,
                    pattern: SparsityPattern) -> tuple[Tensor, Tensor]: ...


@dataclass
class PrecomputedMasks:
    """Masks made elsewhere (the sandbox); the loop verifies and applies them.

    `layer_sparsity` is what was requested per layer; `group` how the masks were
    drawn ("row" = exact count per row, "layer" = exact count per layer).
    """

    masks: dict[str, Tensor]
    layer_sparsity: dict[str, float]
    group: str = "row"
    name: str = "precomputed"
    needs_gram: bool = False
    needs_grad: bool = False

    def block_sparsity(self, model) -> list[float]:
        from autoprune.pruning.calibration import target_linears

        targets = target_linears(model)
        missing = sorted(set(targets) - set(self.masks))
        if missing:
            raise BadInputError(f"precomputed masks miss {len(missing)} layers, e.g. {missing[0]}")
        per_block: dict[int, float] = {}
        for name, (index, _) in targets.items():
            per_block.setdefault(index, self.layer_sparsity[name])
        return [per_block[i] for i in sorted(per_block)]


@dataclass
class PruneResult:
    masks: dict[str, Tensor]
    layer_sparsity: dict[str, float]          # measured on the masks
    block_sparsity: list[float]               # what the allocator asked for
    target_sparsity: float
    method: str
    allocation: str
    pattern: str
    mode: str
    reconstruct: str                          # reconstruction plug-in: none | obs | exact
    calibration: str
    timings: dict[str, float]
    peak_rss_mb: float
    block_profiles: Optional[list[dict]] = None
    extras: dict = field(default_factory=dict)

    @property
    def overall_sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / max(total, 1)

    def summary(self) -> dict:
        """JSON-safe description (no tensors)."""
        return {"method": self.method, "allocation": self.allocation, "pattern": self.pattern,
                "mode": self.mode, "reconstruct": self.reconstruct, "target_sparsity": self.target_sparsity,
                "overall_sparsity": self.overall_sparsity, "block_sparsity": self.block_sparsity,
                "layer_sparsity": self.layer_sparsity, "block_profiles": self.block_profiles,
                "calibration": self.calibration, "timings": self.timings, "peak_rss_mb": self.peak_rss_mb,
                **self.extras}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
