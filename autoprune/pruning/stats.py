"""`ActivationStats`: what a candidate metric sees about one linear layer's inputs.

Its fields are the candidate contract's (autoprune/pruning/contract.py, the one list;
tests/test_contract.py checks that they agree). Imported inside the sandbox image, so it
depends on torch only.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Optional

import torch

from autoprune.pruning.contract import TENSOR_NAMES


@dataclass
class ActivationStats:
    """Calibration statistics of the inputs X (tokens × in_features) of one linear layer.

    norm     ‖X_j‖₂ over all calibration tokens, shape (in_features,)
    sq_mean  mean of X_j², shape (in_features,)
    mean     mean of X_j, shape (in_features,)
    var      variance of X_j, shape (in_features,)
    max_abs  max |X_j|, shape (in_features,)
    hess_diag  diag(XᵀX) = Σ X_j², shape (in_features,) (norm² when not given)
    hinv_diag  diag((XᵀX + λI)⁻¹), shape (in_features,), only when the gram was collected
    gram     XᵀX (in_features, in_features), only when the run enables it
    grad     per-weight gradient magnitude (out_features, in_features), only when enabled
    layer_index  index of the decoder block this layer belongs to
    num_layers   number of decoder blocks in the model
    name         short name of the linear: "q_proj", "down_proj", "fc1", ...
    nsamples     number of calibration tokens
    """

    norm: torch.Tensor
    sq_mean: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    max_abs: torch.Tensor
    layer_index: int = 0
    num_layers: int = 1
    name: str = ""
    nsamples: int = 0
    hess_diag: Optional[torch.Tensor] = None
    hinv_diag: Optional[torch.Tensor] = None
    gram: Optional[torch.Tensor] = None
    grad: Optional[torch.Tensor] = None
    extras: dict = field(default_factory=dict)     # trusted code only: not in the contract

    def __post_init__(self):
        if self.hess_diag is None:
            self.hess_diag = self.norm * self.norm       # Σ X_j² = ‖X_j‖²

    @property
    def in_features(self) -> int:
        return int(self.norm.shape[0])

    def to_tensors(self, prefix: str, *, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """Flatten into `{prefix.field: tensor}` for a safetensors file (without the fields `skip`).
        The gram is copied: layers that read one input share one XᵀX, a file needs its own tensor."""
        out = {}
        for k in TENSOR_NAMES:
            value = getattr(self, k)
            if value is not None and k not in skip:
                out[f"{prefix}.{k}"] = value.contiguous().clone() if k == "gram" else value.contiguous()
        return out

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], prefix: str, *, layer_index: int,
        num_layers: int, name: str, nsamples: int = 0,
    ) -> "ActivationStats":
        """Inverse of `to_tensors`."""
        required = {k: tensors[f"{prefix}.{k}"] for k in REQUIRED_TENSORS}
        optional = {k: tensors.get(f"{prefix}.{k}") for k in TENSOR_NAMES if k not in required}
        return cls(**required, **optional, layer_index=layer_index, num_layers=num_layers,
                   name=name, nsamples=nsamples)


REQUIRED_TENSORS = tuple(f.name for f in fields(ActivationStats)
                         if f.default is MISSING and f.default_factory is MISSING)


class RunningChannelStats:
    """Accumulates ActivationStats fields over batches of inputs.

    Each batch is reduced in float32 (XᵀX as one float32 matmul: the float64 one took 2.4x as
    long on the embedded model, benchmarks/results/calibration_speed.md) and summed into float64
    accumulators once per batch, so the rounding error does not grow with the number of batches."""

    def __init__(self, in_features: int, *, with_gram: bool = False):
        zeros = lambda: torch.zeros(in_features, dtype=torch.float64)  # noqa: E731
        self.count = 0
        self.sum, self.sum_sq, self.max_abs = zeros(), zeros(), zeros()
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float64) if with_gram else None

    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.count += x.shape[0]
        self.sum += x.sum(0, dtype=torch.float64)
        self.sum_sq += (x * x).sum(0, dtype=torch.float64)
        self.max_abs = torch.maximum(self.max_abs, x.abs().amax(0).to(torch.float64))
        if self.gram is not None:
            self.gram += x.T @ x

    def finish(self, *, layer_index: int, num_layers: int, name: str) -> ActivationStats:
        n = max(self.count, 1)
        mean = self.sum / n
        sq_mean = self.sum_sq / n
        var = (sq_mean - mean * mean).clamp_min(0.0)
        f32 = lambda t: t.to(torch.float32)  # noqa: E731
        return ActivationStats(
            norm=f32(self.sum_sq.sqrt()), sq_mean=f32(sq_mean), mean=f32(mean), var=f32(var),
            max_abs=f32(self.max_abs), hess_diag=f32(self.sum_sq), gram=None if self.gram is None else f32(self.gram),
            layer_index=layer_index, num_layers=num_layers, name=name, nsamples=self.count,
        )
