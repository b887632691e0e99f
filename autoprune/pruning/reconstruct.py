"""Reconstruction plug-ins: the weights of one layer for a FIXED keep-mask.

A reconstruction is a function `(W, mask, stats, start) -> W'` with W' exactly zero where the
mask prunes. `start` is the weights a layer pruner already produced (SparseGPT's or ALPS's
update), or None for a mask from a metric. Registered by name (`--reconstruct`):

- ``none``: the masked weights (a layer pruner keeps its own update).
- ``obs``: SparseGPT's OBS column sweep with the mask fixed (`sparsegpt.reconstruct`).
- ``exact``: the optimum of the layer-wise objective for that mask. With H = XᵀX + δI
  (δ = 0.01 · mean diag, SparseGPT's damping), every row w solves

      min over w' with w'_j = 0 off its kept support S:  (w − w') H (w − w')ᵀ
      ⇔  H_SS w'_S = (H wᵀ)_S

  by conjugate gradients batched over rows (two matrix products per iteration), in the
  variables scaled to a unit-diagonal H (the Jacobi preconditioner, as ALPS does) and
  preconditioned with (Ĥ⁻¹)_SS, warm-started from the OBS solution (or the pruner's own
  weights). CG from the warm start lowers the damped objective at every step, so it never
  ends above OBS.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from autoprune.errors import BadInputError
from autoprune.pruning.choices import reconstruction_name
from autoprune.pruning.sparsegpt import DAMP
from autoprune.pruning.sparsegpt import reconstruct as obs_sweep_reconstruct
from autoprune.pruning.stats import ActivationStats

Reconstruction = Callable[[Tensor, Tensor, Optional[ActivationStats], Optional[Tensor]], Tensor]

RTOL = 1e-4          # stop when every row's residual is below RTOL × its right-hand side
MAX_ITER = 100
COMPACT = 0.8        # CG goes on with the rows still running once at most this fraction of them runs


def damped_gram(gram: Tensor, damp: float = DAMP, dtype=torch.float64) -> Tensor:
    """H + δI with δ = damp · mean(diag H); an input that never fires still gets δ."""
    H = gram.to(dtype).clone()
    base = float(torch.diagonal(H).mean().clamp_min(1e-12))
    H.diagonal().add_(damp * base)
    return H


def unit_diagonal(H: Tensor) -> tuple[Tensor, Tensor]:
    """(Ĥ, s) with Ĥ = H / (s sᵀ), s = sqrt(diag H): the objective in the variables w ⊙ s."""
    s = torch.diagonal(H).sqrt()
    return H / s.reshape(-1, 1) / s.reshape(1, -1), s


def buffers(R: Tensor, inverse: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """masked_cg's work arrays shaped like R (products written in place: no allocation per
    iteration); without a preconditioner Z is R itself."""
    return torch.empty_like(R), (R if inverse is None else torch.empty_like(R)), torch.empty_like(R)


def precondition(R: Tensor, keep: Tensor, inverse: Optional[Tensor], Z: Tensor) -> None:
    """Z ← (R Ĥ⁻¹) ⊙ keep, in place (Z is R itself without a preconditioner)."""
    if inverse is not None:
        torch.mm(R, inverse, out=Z).mul_(keep)


def masked_cg(Hn: Tensor, rhs: Tensor, mask: Tensor, start: Tensor, *, rtol: float = RTOL,
              max_iter: int = MAX_ITER, inverse: Optional[Tensor] = None) -> Tensor:
    """Solve Ĥ_SS b_S = rhs_S for every row of `rhs` (rows × in) on its own support, from `start`.

    Each row is an independent symmetric positive definite system; residuals and directions
    are kept on the support, so the iterates stay exactly zero off it. `inverse` (Ĥ⁻¹) makes it
    preconditioned CG with (Ĥ⁻¹)_SS, the inverse of Ĥ_SS's Schur complement, itself SPD: on the
    calibration Hessians it needs 2-7x fewer iterations than plain CG, at two products per
    iteration instead of one. Either way a row stops when its residual is below rtol × its
    right-hand side (the products then run on the running rows only), and each step lowers
    the objective.
    """
    keep = mask.to(Hn.dtype)
    out = start * keep
    B, R = out, (rhs - out @ Hn).mul_(keep)
    AP, Z, tmp = buffers(R, inverse)
    precondition(R, keep, inverse, Z)
    P = Z.clone()
    rr, rz = torch.mul(R, R, out=tmp).sum(1), torch.mul(R, Z, out=tmp).sum(1)
    tol = (rtol * rtol) * (rhs * keep).pow(2).sum(1).clamp_min(1e-30)
    rows = None                   # indices (into out) of the rows B holds, when not all of them
    for _ in range(max_iter):
        active = rr > tol
        running = int(active.sum())
        if running == 0:
            break
        if running <= COMPACT * len(rr):     # drop the rows that have stopped: their products are wasted
            if rows is None:      # B is `out` itself so far
                rows = torch.arange(len(out), device=out.device)
            else:
                out[rows] = B
            rows, B, R, P, keep, rr, rz, tol = (t[active] for t in (rows, B, R, P, keep, rr, rz, tol))
            active = active[active]
            AP, Z, tmp = buffers(R, inverse)
        torch.mm(P, Hn, out=AP).mul_(keep)
        pap = torch.mul(P, AP, out=tmp).sum(1)
        alpha = torch.where(active & (pap > 0), rz / pap.clamp_min(1e-30), torch.zeros_like(rr)).unsqueeze(1)
        B.addcmul_(alpha, P)
        R.addcmul_(alpha, AP, value=-1.0)
        precondition(R, keep, inverse, Z)
        rr, rz_new = torch.mul(R, R, out=tmp).sum(1), torch.mul(R, Z, out=tmp).sum(1)
        P.mul_((rz_new / rz.clamp_min(1e-30)).unsqueeze(1)).add_(Z)
        rz = rz_new
    if rows is not None:
        out[rows] = B
    return out


def unit_hessian(gram: Tensor, damp: float = DAMP, dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """(Ĥ, s, Ĥ⁻¹) of the damped XᵀX (`unit_diagonal`; Ĥ⁻¹ the preconditioner of `masked_cg`), in
    `dtype`: what `exact_refit` needs of one layer input, independent of the mask (computed once
    per input when many masks are refitted)."""
    Hn, s = unit_diagonal(damped_gram(gram, damp))
    L, info = torch.linalg.cholesky_ex(Hn)
    inverse = torch.cholesky_inverse(L) if info == 0 else torch.eye(len(s), dtype=Hn.dtype, device=Hn.device)
    return Hn.to(dtype), s.to(dtype), inverse.to(dtype)


def exact_refit(W: Tensor, mask: Tensor, gram: Optional[Tensor] = None, *, start: Optional[Tensor] = None,
                damp: float = DAMP, rtol: float = RTOL, max_iter: int = MAX_ITER, dtype=torch.float32,
                unit: Optional[tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
    """The per-row least-squares optimum of the damped layer objective on `mask`'s support
    (`unit`: `unit_hessian(gram, damp, dtype)`, precomputed)."""
    mask = mask.to(device=W.device, dtype=torch.bool)
    if unit is None:
        if gram is None:
            raise ValueError("exact_refit needs the layer's XᵀX or its unit_hessian")
        unit = unit_hessian(gram, damp, dtype)
    Hn, s, inverse = (t.to(W.device) for t in unit)
    dense = W.detach().to(dtype) * s
    rhs = dense @ Hn
    warm = (start.detach().to(dtype) if start is not None else W.detach().to(dtype) * mask) * s
    B = masked_cg(Hn, rhs, mask, warm, rtol=rtol, max_iter=max_iter, inverse=inverse)
    return (B / s).to(torch.float32) * mask


def layer_error(W: Tensor, W_new: Tensor, gram: Tensor, damp: float = 0.0) -> float:
    """(W − W') H (W − W')ᵀ summed over rows: ‖WX − W'X‖² (with damping δ when asked)."""
    H = damped_gram(gram, damp) if damp else gram.to(torch.float64)
    E = (W.to(torch.float64) - W_new.to(torch.float64))
    return float(((E @ H) * E).sum())


def require_gram(X: Optional[ActivationStats], what: str) -> Tensor:
    if X is None or X.gram is None:
        raise BadInputError(f"reconstruction {what!r} needs XᵀX of {getattr(X, 'name', 'the layer')}")
    return X.gram


def no_reconstruction(W: Tensor, mask: Tensor, X: Optional[ActivationStats], start: Optional[Tensor]) -> Tensor:
    return start * mask if start is not None else W * mask


def obs_reconstruction(W: Tensor, mask: Tensor, X: Optional[ActivationStats], start: Optional[Tensor]) -> Tensor:
    if start is not None:        # a layer pruner's own update is already an OBS-class reconstruction
        return start * mask
    return obs_sweep_reconstruct(W, mask, require_gram(X, "obs"))


def exact_reconstruction(W: Tensor, mask: Tensor, X: Optional[ActivationStats], start: Optional[Tensor]) -> Tensor:
    gram = require_gram(X, "exact")
    warm = start if start is not None else obs_sweep_reconstruct(W, mask, gram)
    return exact_refit(W, mask, gram, start=warm)


RECONSTRUCTIONS: dict[str, Reconstruction] = {
    "none": no_reconstruction, "obs": obs_reconstruction, "exact": exact_reconstruction}


def get_reconstruction(value) -> Reconstruction:
    return RECONSTRUCTIONS[reconstruction_name(value)]


def needs_gram(value) -> bool:
    return reconstruction_name(value) != "none"
