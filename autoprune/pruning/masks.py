"""Scores → masks, mask verification, and the bit-packed mask transport format.

A mask is a bool tensor shaped like the weight: True = keep. Every mask is built
by `scores_to_mask` and checked by `verify_mask`, wherever it comes from (a
built-in metric, a candidate in the sandbox). Depends on torch and numpy only:
the sandbox worker imports it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from autoprune.errors import BadInputError, MaskError
from autoprune.pruning.pattern import SparsityPattern

Group = Literal["row", "layer"]


def pruned_count(shape: tuple[int, int], sparsity: float, group: Group, pattern: SparsityPattern) -> int:
    """How many weights a verified mask of this shape must prune (exactly): the nearest integer
    to rows·cols·sparsity, so per-layer sparsities from an allocator average to the target."""
    rows, cols = shape
    if pattern.structured:
        return rows * (cols // pattern.m) * (pattern.m - pattern.n)
    return round(rows * cols * sparsity)


def row_pruned_counts(shape: tuple[int, int], sparsity: float) -> tuple[int, int]:
    """Per-row counts for row-wise masks: (base, extra): the first `extra` rows prune base + 1,
    the others base, so the layer total is exactly `pruned_count` even when cols·sparsity
    is not an integer."""
    rows = max(shape[0], 1)
    total = pruned_count(shape, sparsity, "row", SparsityPattern())
    return total // rows, total % rows


def check_pattern_fits(shape: tuple[int, int], pattern: SparsityPattern, name: str = "layer") -> None:
    if pattern.structured and shape[1] % pattern.m:
        raise BadInputError(
            f"pattern {pattern} does not divide {name}: in_features={shape[1]} is not a multiple of {pattern.m}")


def scores_to_mask(
    scores: torch.Tensor, sparsity: float, *, group: Group = "row",
    pattern: SparsityPattern = SparsityPattern(),
) -> torch.Tensor:
    """Keep the highest-scoring weights: prune exactly `pruned_count` lowest ones.

    Ties are broken by index (lower index pruned first, as a stable sort would),
    so the same scores always give the same mask, in the sandbox and on the host.
    """
    if scores.dim() != 2:
        raise MaskError(f"scores must be 2-D, got shape {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise MaskError("scores contain NaN or infinite values")
    scores = scores.detach().to(torch.float32)
    rows, cols = scores.shape
    if pattern.structured:
        check_pattern_fits((rows, cols), pattern)
        blocks = scores.reshape(rows, cols // pattern.m, pattern.m)
        order = torch.sort(blocks, dim=-1, stable=True).indices[..., : pattern.m - pattern.n]
        blocks_mask = torch.ones_like(blocks, dtype=torch.bool).scatter_(-1, order, False)
        return blocks_mask.reshape(rows, cols)
    if group == "row":
        base, extra = row_pruned_counts((rows, cols), sparsity)
        mask = lowest_pruned(scores, base)
        if extra:
            mask[:extra] = lowest_pruned(scores[:extra], base + 1)
        return mask
    k = pruned_count((rows, cols), sparsity, group, pattern)
    return lowest_pruned(scores.reshape(1, -1), k).reshape(rows, cols)


def lowest_pruned(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask pruning the `k` lowest scores of every row, ties to the lower index.

    Equal to a stable sort's first `k` indices, in linear time: everything below
    the k-th value goes, then the first equal ones until `k` are gone.
    """
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
    below = scores < kth
    ties_needed = k - below.sum(dim=-1, keepdim=True)
    ties = scores == kth
    return ~(below | (ties & (torch.cumsum(ties, dim=-1) <= ties_needed)))


def verify_mask(
    mask: torch.Tensor, shape: tuple[int, int], sparsity: float, *, group: Group = "row",
    pattern: SparsityPattern = SparsityPattern(), name: str = "layer",
) -> None:
    """Raise MaskError unless `mask` is a bool keep-mask of `shape` with the exact sparsity/pattern."""
    if mask.dtype != torch.bool:
        raise MaskError(f"{name}: mask dtype {mask.dtype}, expected bool")
    if tuple(mask.shape) != tuple(shape):
        raise MaskError(f"{name}: mask shape {tuple(mask.shape)}, expected {tuple(shape)}")
    rows, cols = shape
    pruned = (~mask).sum().item()
    expected = pruned_count(shape, sparsity, group, pattern)
    if pruned != expected:
        raise MaskError(f"{name}: {pruned} weights pruned, expected exactly {expected}")
    if pattern.structured:
        kept = mask.reshape(rows, cols // pattern.m, pattern.m).sum(-1)
        if not bool((kept == pattern.n).all()):
            raise MaskError(f"{name}: not a {pattern} pattern")
    elif group == "row":
        base, extra = row_pruned_counts(shape, sparsity)
        per_row = (~mask).sum(1)
        if not (bool((per_row[:extra] == base + 1).all()) and bool((per_row[extra:] == base).all())):
            raise MaskError(f"{name}: rows must prune {base + 1} weights (first {extra} rows) or {base} "
                            f"(the others)")


def pack_mask(mask: torch.Tensor) -> bytes:
    """Bit-pack a bool mask (row-major), 8 weights per byte."""
    return np.packbits(mask.flatten().numpy().astype(np.uint8)).tobytes()


def unpack_mask(data: bytes, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of `pack_mask`; raises MaskError when the byte count does not fit the shape."""
    numel = shape[0] * shape[1]
    if len(data) != (numel + 7) // 8:
        raise MaskError(f"packed mask has {len(data)} bytes, expected {(numel + 7) // 8} for {shape}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:numel]
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def mask_sparsity(mask: torch.Tensor) -> float:
    return 1.0 - mask.float().mean().item()
