"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with a Hessian from XᵀX.

With H = XᵀX + δI, removing weight q of a row and compensating with the
remaining weights of that row changes the layer output least when the other
weights move by  −(w_q / [H⁻¹]_qq) · H⁻¹[q, :].  Processing the columns left
to right with the upper Cholesky factor U of H⁻¹ turns this into a cheap
sweep: each column's rounding error `(w − kept)/U_jj` is pushed onto the
columns to its right (lazily, a block of 128 columns at a time).

`sparsegpt_prune` also chooses the mask (per block of columns, by the OBS
saliency w²/U_jj², or per M columns for N:M); `reconstruct` runs the same
sweep with a mask given by any metric (DESIGN §5). U depends on the layer input's
XᵀX only (`ObsFactor`), so a refit of many masks factors each input once.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from autoprune.errors import BadInputError
from autoprune.pruning.masks import SparsityPattern
from autoprune.pruning.stats import ActivationStats

DAMP = 0.01
BLOCKSIZE = 128


def damped_inverse_hessian(gram: Tensor, damp: float = DAMP) -> Tensor:
    """(XᵀX + δI)⁻¹ in float64, δ = damp · mean diag (more when H is numerically singular);
    an input that never fires gets H_jj = 1."""
    H = gram.to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0           # an input that never fires: its weights go, nothing to compensate
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    base = torch.diagonal(H).mean()
    for attempt in range(6):      # more damping when H is numerically singular
        L, info = torch.linalg.cholesky_ex(H + damp * (10 ** attempt) * base * eye)
        if info == 0:
            break
    else:
        raise BadInputError("SparseGPT: the Hessian is not positive definite even with heavy damping")
    return torch.cholesky_inverse(L)


@dataclass(frozen=True)
class ObsFactor:
    """What the OBS sweep needs of one layer input's Hessian, independent of the mask and of the
    weights: the upper Cholesky factor U of (XᵀX + δI)⁻¹ (float32) and the inputs that never fired.
    Layers that read one input (q/k/v, gate/up) and every candidate mask can share one."""

    U: Tensor
    dead: Tensor

    @classmethod
    def of(cls, gram: Tensor, damp: float = DAMP) -> "ObsFactor":
        U = torch.linalg.cholesky(damped_inverse_hessian(gram, damp), upper=True).to(torch.float32)
        return cls(U, torch.diagonal(gram) == 0)

    def to(self, device) -> "ObsFactor":
        return self if self.U.device == torch.device(device) else ObsFactor(self.U.to(device), self.dead.to(device))


def inverse_hessian_factor(gram: Tensor, W: Tensor, damp: float = DAMP) -> Tensor:
    """Upper Cholesky factor of (XᵀX + δI)⁻¹, δ = damp · mean diag. Zeroes W's dead inputs in place."""
    factor = ObsFactor.of(gram, damp)
    W[:, factor.dead] = 0.0
    return factor.U


def saliency(W: Tensor, d: Tensor) -> Tensor:
    """OBS saliency of each weight: w² / [H⁻¹]_jj² (here with the Cholesky diagonal)."""
    return W * W / (d.reshape(1, -1) ** 2)


def block_mask_unstructured(W1: Tensor, d1: Tensor, start: int, end: int, rows: int, sparsity: float) -> Tensor:
    """Prune the block's lowest-saliency weights; cumulative counts make the layer total exact."""
    k = round(rows * end * sparsity) - round(rows * start * sparsity)
    keep = torch.ones_like(W1, dtype=torch.bool).reshape(-1)
    order = torch.sort(saliency(W1, d1).reshape(-1), stable=True).indices[:k]
    return keep.scatter_(0, order, False).reshape(W1.shape)


def nm_group_mask(W1: Tensor, d1: Tensor, j: int, pattern: SparsityPattern) -> Tensor:
    """Within columns j..j+M of the block, keep the N most salient weights of each row."""
    s = saliency(W1[:, j: j + pattern.m], d1[j: j + pattern.m])
    order = torch.sort(s, dim=1, stable=True).indices[:, : pattern.m - pattern.n]
    return torch.ones_like(s, dtype=torch.bool).scatter_(1, order, False)


@contextmanager
def torch_threads(n: int):
    """Run the block with `n` intra-op threads (restored after). With two threads on a busy
    two-core machine, the column loop's small ops ran about 100x slower than with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def obs_sweep(W: Tensor, U: Tensor, *, mask: Optional[Tensor], sparsity: float = 0.0,
              pattern: SparsityPattern = SparsityPattern(), blocksize: int = BLOCKSIZE) -> tuple[Tensor, Tensor]:
    """The OBS column sweep. With `mask` given it is kept fixed; otherwise chosen adaptively."""
    W = W.clone()
    rows, cols = W.shape
    keep = torch.ones_like(W, dtype=torch.bool) if mask is None else mask.clone()
    if pattern.structured and blocksize % pattern.m:
        blocksize = pattern.m * max(blocksize // pattern.m, 1)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        d1 = torch.diagonal(U1)
        errors = torch.zeros_like(W1)
        if mask is None and not pattern.structured:
            keep[:, i1:i2] = block_mask_unstructured(W1, d1, i1, i2, rows, sparsity)
        with torch_threads(1):    # tiny per-column ops: thread hand-offs would cost more than the work
            for j in range(i2 - i1):
                if mask is None and pattern.structured and j % pattern.m == 0:
                    keep[:, i1 + j: i1 + j + pattern.m] = nm_group_mask(W1, d1, j, pattern)
                err = W1[:, j].masked_fill(keep[:, i1 + j], 0.0).div_(d1[j])
                W1[:, j:].addr_(err, U1[j, j:], alpha=-1.0)
                errors[:, j] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= errors @ U[i1:i2, i2:]
    return keep, W * keep


def sparsegpt_prune(W: Tensor, gram: Tensor, sparsity: float, pattern: SparsityPattern = SparsityPattern(),
                    *, damp: float = DAMP, blocksize: int = BLOCKSIZE) -> tuple[Tensor, Tensor]:
    """(keep mask, updated weights) for one layer, exactly `round(rows·cols·sparsity)` pruned or N:M."""
    W = W.detach().to(torch.float32).clone()
    U = inverse_hessian_factor(gram, W, damp)
    return obs_sweep(W, U, mask=None, sparsity=sparsity, pattern=pattern, blocksize=blocksize)


def reconstruct(W: Tensor, mask: Tensor, gram: Optional[Tensor] = None, *, damp: float = DAMP,
                blocksize: int = BLOCKSIZE, factor: Optional[ObsFactor] = None) -> Tensor:
    """Surviving weights updated by OBS for a FIXED keep-mask; pruned weights are exactly zero.
    `factor` (`ObsFactor.of(gram, damp)`, computed once per layer input) saves the Cholesky work."""
    if factor is None:
        if gram is None:
            raise ValueError("reconstruct needs the layer's XᵀX or its ObsFactor")
        factor = ObsFactor.of(gram, damp)
    W = W.detach().to(torch.float32).clone()
    factor = factor.to(W.device)
    W[:, factor.dead] = 0.0
    return obs_sweep(W, factor.U, mask=mask.to(device=W.device, dtype=torch.bool), blocksize=blocksize)[1]


@dataclass(frozen=True)
class SparseGPTPruner:
    """A layer pruner: mask and weight update together, used by the same loop as metrics."""

    name: str = "sparsegpt"
    group: str = "layer"
    needs_gram: bool = True
    needs_grad: bool = False
    damp: float = DAMP
    blocksize: int = BLOCKSIZE

    def prune_layer(self, W: Tensor, X: ActivationStats, sparsity: float,
                    pattern: SparsityPattern) -> tuple[Tensor, Tensor]:
        if X.gram is None:
            raise BadInputError(f"sparsegpt needs XᵀX for {X.name}: calibrate with_gram=True")
        return sparsegpt_prune(W, X.gram, sparsity, pattern, damp=self.damp, blocksize=self.blocksize)
