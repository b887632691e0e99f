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

  by conjugate gradients batched over rows (one matrix product per iteration), in the
  variables scaled to a unit-diagonal H (the Jacobi preconditioner, as ALPS does),
  warm-started from the OBS solution (or the pruner's own weights). CG from the warm
  start lowers the damped objective at every step, so it never ends above OBS.
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


def masked_cg(Hn: Tensor, rhs: Tensor, mask: Tensor, start: Tensor, *, rtol: float = RTOL,
              max_iter: int = MAX_ITER) -> Tensor:
    """Solve Ĥ_SS b_S = rhs_S for every row of `rhs` (rows × in) on its own support, from `start`.

    Each row is an independent symmetric positive definite system; residuals and directions
    are kept on the support, so the iterates stay exactly zero off it.
    """
    keep = mask.to(Hn.dtype)
    B = start * keep
    R = (rhs - B @ Hn) * keep
    P = R.clone()
    rr = (R * R).sum(1)
    tol = (rtol * rtol) * (rhs * keep).pow(2).sum(1).clamp_min(1e-30)
    for _ in range(max_iter):
        active = rr > tol
        if not bool(active.any()):
            break
        AP = (P @ Hn) * keep
        pap = (P * AP).sum(1)
        alpha = torch.where(active & (pap > 0), rr / pap.clamp_min(1e-30), torch.zeros_like(rr))
        B.addcmul_(alpha.unsqueeze(1), P)
        R.addcmul_(alpha.unsqueeze(1), AP, value=-1.0)
        rr_new = (R * R).sum(1)
        beta = rr_new / rr.clamp_min(1e-30)
        P = R + beta.unsqueeze(1) * P
        rr = rr_new
    return B


def unit_hessian(gram: Tensor, damp: float = DAMP, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """(Ĥ, s) of the damped XᵀX (`unit_diagonal`), in `dtype`: what `exact_refit` needs of one layer
    input, independent of the mask (computed once per input when many masks are refitted)."""
    Hn, s = unit_diagonal(damped_gram(gram, damp))
    return Hn.to(dtype), s.to(dtype)


def exact_refit(W: Tensor, mask: Tensor, gram: Optional[Tensor] = None, *, start: Optional[Tensor] = None,
                damp: float = DAMP, rtol: float = RTOL, max_iter: int = MAX_ITER, dtype=torch.float32,
                unit: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """The per-row least-squares optimum of the damped layer objective on `mask`'s support
    (`unit`: `unit_hessian(gram, damp, dtype)`, precomputed)."""
    mask = mask.to(device=W.device, dtype=torch.bool)
    if unit is None:
        if gram is None:
            raise ValueError("exact_refit needs the layer's XᵀX or its unit_hessian")
        unit = unit_hessian(gram, damp, dtype)
    Hn, s = (t.to(W.device) for t in unit)
    dense = W.detach().to(dtype) * s
    rhs = dense @ Hn
    warm = (start.detach().to(dtype) if start is not None else W.detach().to(dtype) * mask) * s
    B = masked_cg(Hn, rhs, mask, warm, rtol=rtol, max_iter=max_iter)
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
