"""A metric from a trusted Python callable `score(W, X)` (e.g. a reviewed candidate).

Untrusted candidate source never comes here: it runs in the sandbox, which
returns masks (`loop.PrecomputedMasks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from autoprune.errors import BadInputError
from autoprune.pruning.stats import ActivationStats


@dataclass
class CandidateMetric:
    score_fn: Callable[[Tensor, ActivationStats], Tensor]
    name: str = "candidate"
    group: str = "row"
    needs_gram: bool = False
    needs_grad: bool = False

    def score(self, W: Tensor, X: ActivationStats) -> Tensor:
        scores = self.score_fn(W, X)
        if not isinstance(scores, Tensor) or tuple(scores.shape) != tuple(W.shape):
            raise BadInputError(f"{self.name}: score() must return a tensor shaped {tuple(W.shape)}")
        return scores.to(torch.float32)

    @classmethod
    def from_namespace(cls, namespace: dict, name: str = "candidate", **flags) -> "CandidateMetric":
        """Wrap the `score` (and optional `GROUP`) defined by trusted source executed into `namespace`."""
        fn = namespace.get("score")
        if not callable(fn):
            raise BadInputError(f"{name}: no score(W, X) function defined")
        group = namespace.get("GROUP", "row")
        if group not in ("row", "layer"):
            raise BadInputError(f"{name}: GROUP must be 'row' or 'layer', got {group!r}")
        return cls(score_fn=fn, name=name, group=group, **flags)
