"""Generation-0 mask programs: the state of the art as `prune(W, X, sparsity, pattern)` candidates.

Source text only (the archive writes them into the run folder like every candidate): they are
gated, run in the sandbox and verified like LLM programs, in the allowed subset of Python and
torch, and they read X.gram, so a run offers them only when its bundle carries XᵀX.

- SparseGPT's own mask selection (Frantar & Alistarh 2023): the OBS column sweep, blocks of 128
  columns chosen by w² / U_jj² (U: the upper Cholesky factor of (XᵀX + λI)⁻¹) with the lazy
  weight updates in between; trusted code's version is autoprune/pruning/sparsegpt.py.
- An ALPS-class selection (after Meng et al. 2024, arXiv 2406.07831): ADMM on the layer's
  least-squares objective in unit-diagonal variables, with a penalty that grows on a fixed,
  short schedule, so a model costs about as much as SparseGPT (trusted, unbounded version:
  autoprune/pruning/alps.py).
"""

from __future__ import annotations

SPARSEGPT_MASK_ID = "seed-sparsegpt-mask"
ALPS_MASK_ID = "seed-alps-mask"

SPARSEGPT_MASK = '''"""SparseGPT's mask selection (Frantar & Alistarh, 2023) as a mask program: the OBS sweep over
blocks of 128 columns; each block prunes its share of the weights with the lowest w² / U_jj²
(U: upper Cholesky factor of (XᵀX + λI)⁻¹, λ = 1 % of the mean diagonal), and every pruned
column's error is pushed onto the columns to its right before they are chosen. Only the mask
is returned: trusted code refits the kept weights."""

import torch

BLOCK = 128
DAMP = 0.01


def inverse_factor(gram, W):
    """U, the upper Cholesky factor of the damped inverse Hessian; zeroes W's dead inputs."""
    H = gram.to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    base = torch.diagonal(H).mean()
    L = None
    for attempt in range(6):
        factor, info = torch.linalg.cholesky_ex(H + DAMP * (10 ** attempt) * base * eye)
        if int(info) == 0:
            L = factor
            break
    if L is None:
        raise ValueError("the Hessian is not positive definite even with heavy damping")
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).to(torch.float32)


def block_keep(W1, d1, pruned):
    """Keep-mask of one block: its `pruned` lowest saliencies go (ties: lower index first)."""
    saliency = (W1 * W1 / (d1.reshape(1, -1) ** 2)).reshape(-1)
    order = torch.sort(saliency, stable=True).indices[:pruned]
    return torch.ones_like(saliency, dtype=torch.bool).scatter(0, order, False).reshape(W1.shape)


def group_keep(W1, d1, j, n, m):
    """Keep-mask of columns j..j+m of a block: the n most salient weights of each row."""
    saliency = W1[:, j:j + m] ** 2 / (d1[j:j + m].reshape(1, -1) ** 2)
    order = torch.sort(saliency, dim=1, stable=True).indices[:, :m - n]
    return torch.ones_like(saliency, dtype=torch.bool).scatter(1, order, False)


def prune(W, X, sparsity, pattern):
    rows, cols = W.shape
    U = inverse_factor(X.gram, W)
    keep = torch.ones_like(W, dtype=torch.bool)
    n = pattern["n"] if pattern else 0
    m = pattern["m"] if pattern else 0
    block = m * max(BLOCK // m, 1) if m else BLOCK
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diagonal(U1)
        errors = torch.zeros_like(W1)
        if not m:   # cumulative counts: the layer total is exactly round(rows·cols·sparsity)
            pruned = round(rows * i2 * sparsity) - round(rows * i1 * sparsity)
            keep[:, i1:i2] = block_keep(W1, d1, pruned)
        for j in range(i2 - i1):
            if m and j % m == 0:
                keep[:, i1 + j:i1 + j + m] = group_keep(W1, d1, j, n, m)
            err = W1[:, j].masked_fill(keep[:, i1 + j], 0.0) / d1[j]
            W1[:, j:] = W1[:, j:] - torch.outer(err, U1[j, j:])
            errors[:, j] = err
        W[:, i2:] = W[:, i2:] - errors @ U[i1:i2, i2:]
    return keep
'''

ALPS_MASK = '''"""An ALPS-class mask program (after Meng et al., 2024): ADMM on the layer objective
½ tr((B − B0) Ĥ (B − B0)ᵀ) over masks of the pattern, in variables scaled so that the damped
Hessian Ĥ = XᵀX + λI has a unit diagonal. B is the free copy, D the sparse one, V the scaled
dual. The penalty ρ grows on a fixed schedule (STAGES values of ρ, STEPS iterations each,
(Ĥ + ρI)⁻¹ formed once per stage), so one layer costs a bounded number of matrix products;
a stage whose support no longer moves ends the schedule. Returns the support of the last B's
projection; trusted code refits the kept weights."""

import torch

DAMP = 0.01
RHO0 = 0.2
GROWTH = 2.0
STAGES = 3
STEPS = 4


def project(Z, sparsity, pattern):
    """Keep-mask of the largest |Z|: exactly round(rows·cols·sparsity) pruned (ties: the lower
    index goes first), or n of every m consecutive weights of each row."""
    rows, cols = Z.shape
    A = Z * Z
    if pattern:
        n, m = pattern["n"], pattern["m"]
        groups = A.reshape(rows, cols // m, m)
        order = torch.topk(groups, m - n, dim=-1, largest=False).indices
        return torch.ones_like(groups, dtype=torch.bool).scatter(-1, order, False).reshape(rows, cols)
    k = round(rows * cols * sparsity)
    if k == 0:
        return torch.ones_like(A, dtype=torch.bool)
    flat = A.reshape(-1)
    kth = torch.kthvalue(flat, k).values
    below = flat < kth
    ties = flat == kth
    pruned = torch.logical_or(below, torch.logical_and(ties, torch.cumsum(ties.int(), 0) <= k - below.sum()))
    return torch.logical_not(pruned).reshape(rows, cols)


def prune(W, X, sparsity, pattern):
    H = X.gram.to(torch.float64)
    H = H + DAMP * torch.diagonal(H).mean().clamp_min(1e-12) * torch.eye(H.shape[0], dtype=torch.float64)
    s = torch.diagonal(H).sqrt()
    Hn = (H / s.reshape(-1, 1) / s.reshape(1, -1)).float()
    s = s.float()
    eye = torch.eye(Hn.shape[0])
    B0 = W * s.reshape(1, -1)
    G = B0 @ Hn
    mask = project(B0, sparsity, pattern)
    B, D, V = B0, B0 * mask, torch.zeros_like(B0)
    rho = RHO0
    for stage in range(STAGES):
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(Hn + rho * eye))
        before = mask
        for step in range(STEPS):
            B = (G - V + rho * D) @ inverse
            Z = B + V / rho
            mask = project(Z, sparsity, pattern)
            D = Z * mask
            V = V + rho * (B - D)
        if stage > 0 and bool(torch.equal(mask, before)):
            break
        rho = rho * GROWTH
    return project(B, sparsity, pattern)
'''

MASK_SEED_SOURCES = {SPARSEGPT_MASK_ID: SPARSEGPT_MASK, ALPS_MASK_ID: ALPS_MASK}
MASK_SEED_HYPOTHESES = {
    SPARSEGPT_MASK_ID: "sparsegpt-mask: choose the mask in the OBS sweep, so each choice sees the "
                       "compensation of the weights pruned before it",
    ALPS_MASK_ID: "alps-mask: choose the support that minimises the layer's output error jointly, by ADMM",
}
