"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with a Hessian from XᵀX.

With H = XᵀX + δI, removing weight q of a row and compensating with the
remaining weights of that row changes the layer output least when the other
weights move by  −(w_q / [H⁻¹]_qq) · H⁻¹[q, :].  Processing the columns left
to right with the upper Cholesky factor U of H⁻¹ turns this into a cheap
sweep: each column's rounding error `(w − kept)/U_jj` is pushed onto the
columns to its right (lazily: the column loop runs within 32 columns, matrix
products carry the errors on to the rest of each 128-column block and beyond).
U itself comes from one Cholesky factorisation of H (`inverse_hessian_cholesky`).

`sparsegpt_prune` also chooses the mask (per block of columns, by the OBS
saliency w²/U_jj², or per M columns for N:M); `reconstruct` runs the same
sweep with a mask given by any metric (DESIGN §5). U depends on the layer input's
XᵀX only (`ObsFactor`), so a refit of many masks factors each input once.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from autoprune.errors import BadInputError
from autoprune.pruning.masks import SparsityPattern
from autoprune.pruning.stats import ActivationStats

DAMP = 0.01
BLOCKSIZE = 128
INNER = 32           # columns of the sweep's innermost loop (a multiple of M for N:M)


def damped_cholesky(gram: Tensor, damp: float = DAMP, *, reverse: bool = False) -> Tensor:
    """Lower Cholesky factor of XᵀX + δI in float64 (of it with rows and columns in reverse order
    with `reverse`), δ = damp · mean diag (more when H is numerically singular); an input that
    never fires gets H_jj = 1."""
    H = gram.to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0           # an input that never fires: its weights go, nothing to compensate
    if reverse:
        H = H.flip(0, 1)
    eye = torch.eye(H.shape[0], dtype=torch.float64, device=H.device)
    base = torch.diagonal(H).mean()
    for attempt in range(6):      # more damping when H is numerically singular
        L, info = torch.linalg.cholesky_ex(H + damp * (10 ** attempt) * base * eye)
        if info == 0:
            return L
    raise BadInputError("SparseGPT: the Hessian is not positive definite even with heavy damping")


def damped_inverse_hessian(gram: Tensor, damp: float = DAMP) -> Tensor:
    """(XᵀX + δI)⁻¹ in float64 (`damped_cholesky`'s damping)."""
    return torch.cholesky_inverse(damped_cholesky(gram, damp))


def inverse_hessian_cholesky(gram: Tensor, damp: float = DAMP) -> Tensor:
    """The upper Cholesky factor U of (XᵀX + δI)⁻¹ (UᵀU = H⁻¹), float64, from one factorisation of H:
    with J the order reversal, J H J = L Lᵀ gives H = M Mᵀ with M = J L J upper triangular, so U = M⁻¹
    (no explicit inverse of H, no second Cholesky)."""
    M = damped_cholesky(gram, damp, reverse=True).flip(0, 1)
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    return torch.linalg.solve_triangular(M, eye, upper=True)


@dataclass(frozen=True)
class ObsFactor:
    """What the OBS sweep needs of one layer input's Hessian, independent of the mask and of the
    weights: the upper Cholesky factor U of (XᵀX + δI)⁻¹ (float32) and the inputs that never fired.
    Layers that read one input (q/k/v, gate/up) and every candidate mask can share one."""

    U: Tensor
    dead: Tensor

    @classmethod
    def of(cls, gram: Tensor, damp: float = DAMP) -> "ObsFactor":
        U = inverse_hessian_cholesky(gram, damp).to(torch.float32)
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


def nm_group_mask(W_group: Tensor, d_group: Tensor, pattern: SparsityPattern) -> Tensor:
    """Keep-mask of one group of M columns (rows × M): the N most salient weights of each row."""
    s = saliency(W_group, d_group)
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


@dataclass
class Sweep:
    """The sweep's state in the transposed layout (column j of W is the contiguous row j): Wt the
    weights as updated so far, Et each column's rounding error, keep_t the keep-mask and scale_t
    (1 − keep) / U_jj, what turns a column into its error."""

    Wt: Tensor
    U: Tensor
    keep_t: Tensor

    def __post_init__(self):
        self.d = torch.diagonal(self.U)
        self.Et = torch.empty_like(self.Wt)
        self.scale_t = torch.empty_like(self.Wt)
        torch.div(~self.keep_t, self.d[:, None], out=self.scale_t)

    def set_keep(self, j1: int, j2: int, keep_t: Tensor) -> None:
        self.keep_t[j1:j2] = keep_t
        torch.div(~keep_t, self.d[j1:j2, None], out=self.scale_t[j1:j2])

    def columns(self, j1: int, j2: int, group_mask: Optional[Callable[[int], None]] = None) -> None:
        """Columns j1..j2 one at a time; each error is pushed onto the columns up to j2 only."""
        Wt, Et, U, scale_t = self.Wt, self.Et, self.U, self.scale_t
        for j in range(j1, j2):
            if group_mask is not None:
                group_mask(j)
            e = torch.mul(Wt[j], scale_t[j], out=Et[j])
            if j + 1 < j2:
                Wt[j + 1: j2].addr_(U[j, j + 1: j2], e, alpha=-1.0)

    def carry(self, j1: int, j2: int, end: int) -> None:
        """Push the errors of columns j1..j2 onto columns j2..end (one matrix product)."""
        if j2 < end:
            self.Wt[j2:end].addmm_(self.U[j1:j2, j2:end].T, self.Et[j1:j2], alpha=-1.0)


def obs_sweep(W: Tensor, U: Tensor, *, mask: Optional[Tensor], sparsity: float = 0.0,
              pattern: SparsityPattern = SparsityPattern(), blocksize: int = BLOCKSIZE,
              inner: int = INNER) -> tuple[Tensor, Tensor]:
    """The OBS column sweep. With `mask` given it is kept fixed; otherwise chosen adaptively
    (unstructured: per block of `blocksize` columns; N:M: per group of M columns, when reached).

    Lazy on two levels: the column loop touches only a sub-block of `inner` columns, one matrix
    product carries a sub-block's errors to the rest of its block, another a block's errors to
    the columns after it. Every column has all earlier columns' updates when it is reached: the
    plain left-to-right sweep, up to floating-point rounding. Returns (keep, weights), keep as a
    transposed view; W itself is not changed."""
    rows, cols = W.shape
    structured = pattern.structured
    if structured and blocksize % pattern.m:
        blocksize = pattern.m * max(blocksize // pattern.m, 1)
    inner = min(pattern.m * max(inner // pattern.m, 1) if structured else inner, blocksize)
    keep_t = torch.ones(cols, rows, dtype=torch.bool, device=W.device) if mask is None else mask.T
    state = Sweep(W.T.contiguous(), U, keep_t)
    d = state.d

    def group_mask(j: int) -> None:
        if j % pattern.m == 0:
            state.set_keep(j, j + pattern.m, nm_group_mask(state.Wt[j: j + pattern.m].T, d[j: j + pattern.m],
                                                           pattern).T)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if mask is None and not structured:
            state.set_keep(i1, i2, block_mask_unstructured(state.Wt[i1:i2].T, d[i1:i2], i1, i2, rows,
                                                           sparsity).T)
        with torch_threads(1):    # tiny per-column ops: thread hand-offs would cost more than the work
            for j1 in range(i1, i2, inner):
                j2 = min(j1 + inner, i2)
                state.columns(j1, j2, group_mask if mask is None and structured else None)
                state.carry(j1, j2, i2)
        state.carry(i1, i2, cols)
    keep = state.keep_t.T
    return keep, torch.mul(state.Wt.T, keep, out=torch.empty_like(W))


def sparsegpt_prune(W: Tensor, gram: Tensor, sparsity: float, pattern: SparsityPattern = SparsityPattern(),
                    *, damp: float = DAMP, blocksize: int = BLOCKSIZE) -> tuple[Tensor, Tensor]:
    """(keep mask, updated weights) for one layer, exactly `round(rows·cols·sparsity)` pruned or N:M."""
    W = W.detach().to(torch.float32).clone()
    U = inverse_hessian_factor(gram, W, damp)
    keep, W = obs_sweep(W, U, mask=None, sparsity=sparsity, pattern=pattern, blocksize=blocksize)
    return keep.contiguous(), W


def reconstruct(W: Tensor, mask: Tensor, gram: Optional[Tensor] = None, *, damp: float = DAMP,
                blocksize: int = BLOCKSIZE, factor: Optional[ObsFactor] = None) -> Tensor:
    """Surviving weights updated by OBS for a FIXED keep-mask; pruned weights are exactly zero.
    `factor` (`ObsFactor.of(gram, damp)`, computed once per layer input) saves the Cholesky work."""
    if factor is None:
        if gram is None:
            raise ValueError("reconstruct needs the layer's XᵀX or its ObsFactor")
        factor = ObsFactor.of(gram, damp)
    W = W.detach().to(torch.float32)
    factor = factor.to(W.device)
    keep = mask.to(device=W.device, dtype=torch.bool) & ~factor.dead     # an input that never fired: its weights go
    return obs_sweep(W, factor.U, mask=keep, blocksize=blocksize)[1]


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
