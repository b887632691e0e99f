"""ALPS-class layer pruner (Meng et al. 2024, arXiv 2406.07831): ADMM mask selection, then the
exact refit of the weights on the chosen support.

The layer objective min ½‖WX − ŴX‖² subject to Ŵ having the pattern's sparsity is split as
Ŵ = B (free) and D (sparse) with the constraint B = D, and solved by ADMM on the augmented
Lagrangian with a growing penalty ρ:

    B ← (H W₀ − V + ρD)(H + ρI)⁻¹       (one eigendecomposition of H serves every ρ)
    D ← projection of B + V/ρ onto the pattern (keep the largest entries: exactly
        `pruned_count` of the layer, or N of every M)
    V ← V + ρ(B − D)

in variables scaled to a unit-diagonal, damped H (δ = 0.01 · mean diag, SparseGPT's damping).
Every few iterations ρ grows by a factor set by how much the support still moves (large
moves: faster); ADMM stops when the support has settled. The support of the last B's
projection is the mask; the weights on it are then the per-row least-squares optimum
(`reconstruct.masked_cg`, preconditioned, warm-started from the ADMM solution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from autoprune.errors import BadInputError
from autoprune.pruning.masks import SparsityPattern, scores_to_mask
from autoprune.pruning.reconstruct import masked_cg, unit_hessian
from autoprune.pruning.sparsegpt import DAMP
from autoprune.pruning.stats import ActivationStats

RHO0 = 0.1
MAX_ITER = 300
UPDATE_EVERY = 3
MIN_ITER = 30          # after this many iterations, a support moving less than SETTLED stops ADMM
SETTLED = 3e-4
RHO_MAX = 1e6


def project(Z: Tensor, sparsity: float, pattern: SparsityPattern) -> Tensor:
    """Keep-mask of the projection of Z onto the pattern: the largest |Z| (exact layer count, or N:M)."""
    return scores_to_mask(Z * Z, sparsity, group="layer", pattern=pattern)


def rho_step(rho: float, change: float, changed: bool, growing: bool) -> tuple[float, bool, bool]:
    """(new ρ, growing, restart) from the fraction of the support that moved since the last check."""
    if change > 0.1:
        return rho * 1.3, True, False
    if change > 0.005:
        return rho * 1.2, True, False
    if growing:
        return rho * 1.1, True, False
    return rho / 5.0, False, changed      # ρ too large from the start: the support never moved


@dataclass
class ADMMState:
    B: Tensor
    D: Tensor
    V: Tensor
    mask: Tensor


def admm_support(B0: Tensor, Hn: Tensor, sparsity: float, pattern: SparsityPattern, *, rho: float = RHO0,
                 max_iter: int = MAX_ITER) -> tuple[Tensor, Tensor, int]:
    """(mask, B, iterations) of ADMM on ½ tr((B − B0) Hn (B − B0)ᵀ) over the pattern, rows of B0 = rows of W."""
    L, Q = torch.linalg.eigh(Hn.to(torch.float64))
    L, Q = L.to(B0.dtype), Q.to(B0.dtype)
    inverse = lambda r: (Q / (L + r)) @ Q.T            # noqa: E731  (Hn + ρI)⁻¹
    G = B0 @ Hn
    mask0 = project(B0, sparsity, pattern)
    start = ADMMState(B0.clone(), B0 * mask0, torch.zeros_like(B0), mask0)
    state, checked, inv, growing = start, mask0, inverse(rho), False
    kept = max(int(mask0.sum()), 1)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        B = (G - state.V + rho * state.D) @ inv
        Z = B + state.V / rho
        mask = project(Z, sparsity, pattern)
        D = Z * mask
        state = ADMMState(B, D, state.V + rho * (B - D), mask)
        if iterations % UPDATE_EVERY:
            continue
        moved = int((mask ^ checked).sum())
        change = moved / kept
        checked = mask
        if iterations >= MIN_ITER and change < SETTLED or (growing and moved == 0):
            break
        rho, growing, restart = rho_step(rho, change, moved > 0, growing)
        if restart:
            state = ADMMState(B0.clone(), start.D.clone(), torch.zeros_like(B0), mask0)
        rho = min(rho, RHO_MAX)
        inv = inverse(rho)
    final = project(state.B, sparsity, pattern)
    return final, state.B * final, iterations


def alps_prune(W: Tensor, gram: Tensor, sparsity: float, pattern: SparsityPattern = SparsityPattern(), *,
               damp: float = DAMP, rho: float = RHO0, max_iter: int = MAX_ITER,
               cg_iter: int = 100) -> tuple[Tensor, Tensor, dict]:
    """(keep mask, refitted weights, info) for one layer."""
    Hn, s, inverse = unit_hessian(gram, damp)
    B0 = W.detach().to(torch.float32) * s
    mask, B, iterations = admm_support(B0, Hn, sparsity, pattern, rho=rho, max_iter=max_iter)
    refit = masked_cg(Hn, B0 @ Hn, mask, B, max_iter=cg_iter, inverse=inverse)
    return mask, (refit / s) * mask, {"admm_iterations": iterations}


@dataclass(frozen=True)
class ALPSPruner:
    """A layer pruner like SparseGPT, for the same loop: the mask from ADMM, the weights from the exact refit."""

    name: str = "alps"
    group: str = "layer"
    needs_gram: bool = True
    needs_grad: bool = False
    damp: float = DAMP
    rho: float = RHO0
    max_iter: int = MAX_ITER

    def prune_layer(self, W: Tensor, X: ActivationStats, sparsity: float,
                    pattern: SparsityPattern) -> tuple[Tensor, Tensor]:
        if X is None or X.gram is None:
            raise BadInputError(f"alps needs XᵀX for {getattr(X, 'name', 'the layer')}: calibrate with_gram=True")
        mask, new_W, _ = alps_prune(W, X.gram, sparsity, pattern, damp=self.damp, rho=self.rho,
                                    max_iter=self.max_iter)
        return mask, new_W
