"""THE layer loop: one function prunes a model with any metric, layer pruner or masks.

Sequential mode (Wanda/SparseGPT style): block i's statistics are collected on
inputs that already went through the pruned blocks 0..i-1. One-shot mode uses
the dense model's statistics for every block. Per-block sparsities come from an
allocator fed with profiles of the dense model. A metric, an allocator or a
reconstruction is a plug-in; this file never changes for a new method.

With an `onloader` (autoprune.pruning.onload) the model's blocks stay on disk: the loop
materialises block i, prunes it, saves it and releases it before block i+1, so memory is
bounded by one block; masks are then not kept (the saved weights carry the zeros).
"""

from __future__ import annotations

import time
from typing import Optional, Union

import torch
from torch import Tensor, nn

from autoprune.adapters import adapter_for, linear_weight, set_linear_weight
from autoprune.data import WindowSet
from autoprune.errors import BadInputError
from autoprune.progress import progress_bar
from autoprune.pruning.allocators import allocate_sparsity, needs_profiles
from autoprune.pruning.calibration import (capture_block_inputs, collect_activation_stats, finish_stats,
                                           run_block, stat_hooks, target_linears)
from autoprune.pruning.masks import SparsityPattern, check_pattern_fits, mask_sparsity, scores_to_mask, verify_mask
from autoprune.pruning.metrics import Metric, get_metric
from autoprune.pruning.onload import BlockOnloader
from autoprune.pruning.methods import LayerPruner, PrecomputedMasks, PruneResult, peak_rss_mb
from autoprune.pruning.profile import block_profile
from autoprune.pruning.choices import reconstruction_name
from autoprune.pruning.reconstruct import get_reconstruction
from autoprune.pruning.stats import ActivationStats

Method = Union[Metric, LayerPruner, PrecomputedMasks]
MODES = ("sequential", "one-shot")


def as_pattern(pattern: Union[str, SparsityPattern, None]) -> SparsityPattern:
    return pattern if isinstance(pattern, SparsityPattern) else SparsityPattern.parse(pattern)


def check_pattern_fits_model(model: nn.Module, pattern: SparsityPattern) -> None:
    for name, (_, module) in target_linears(model).items():
        check_pattern_fits(tuple(linear_weight(module).shape), pattern, name)


def block_param_counts(model: nn.Module) -> list[int]:
    counts = [0] * len(adapter_for(model).blocks(model))
    for index, module in target_linears(model).values():
        counts[index] += linear_weight(module).numel()
    return counts


def dense_block_profiles(model: nn.Module, stats: dict[str, ActivationStats], metric: Metric) -> list[dict]:
    """Per-block profile (outlier ratio, skewness) of `metric`'s scores on the dense weights."""
    scores: dict[int, list[Tensor]] = {}
    weights: dict[int, list[Tensor]] = {}
    for name, (index, module) in target_linears(model).items():
        W = linear_weight(module).detach().float().cpu()
        scores.setdefault(index, []).append(metric.score(W, stats[name]))
        weights.setdefault(index, []).append(W)
    return [block_profile(scores[i], weights[i]) for i in sorted(scores)]


def plan_block_sparsity(model: nn.Module, sparsity: float, allocation: str, *,
                        stats: Optional[dict[str, ActivationStats]] = None, profile_metric: Optional[Metric] = None,
                        hyper: Optional[dict] = None) -> tuple[list[float], Optional[list[dict]]]:
    """(per-block sparsities, the profiles they came from). OWL profiles Wanda scores by definition."""
    params = block_param_counts(model)
    if not needs_profiles(allocation):
        return allocate_sparsity(allocation, sparsity, [], params, **(hyper or {})), None
    if stats is None:
        raise BadInputError(f"allocation {allocation!r} needs dense calibration statistics")
    metric = get_metric("wanda") if allocation == "owl" or profile_metric is None else profile_metric
    profiles = dense_block_profiles(model, stats, metric)
    return allocate_sparsity(allocation, sparsity, profiles, params, **(hyper or {})), profiles


def prune_layer(method: Method, name: str, W: Tensor, X: Optional[ActivationStats], sparsity: float,
                pattern: SparsityPattern, reconstruct: str) -> tuple[Tensor, Tensor]:
    """(verified keep-mask, new weights) of one layer; `reconstruct` names the plug-in
    (autoprune.pruning.reconstruct) that sets the weights for the mask, starting from a layer
    pruner's own update when it made one."""
    if isinstance(method, PrecomputedMasks):
        mask, new_W, group = method.masks[name].to(torch.bool), None, method.group
    elif hasattr(method, "prune_layer"):
        (mask, new_W), group = method.prune_layer(W, X, sparsity, pattern), method.group
    else:
        mask = scores_to_mask(method.score(W, X), sparsity, group=method.group, pattern=pattern)
        new_W, group = None, method.group
    verify_mask(mask, tuple(W.shape), sparsity, group=group, pattern=pattern, name=name)
    return mask, get_reconstruction(reconstruct)(W, mask, X, new_W)


def prune_block(model: nn.Module, method: Method, names: list[str], stats: dict[str, Optional[ActivationStats]],
                sparsity: float, pattern: SparsityPattern, reconstruct: str) -> dict[str, Tensor]:
    masks = {}
    for name in names:
        module = model.get_submodule(name)
        W = linear_weight(module).detach().float().cpu()   # statistics are on the CPU
        masks[name], new_W = prune_layer(method, name, W, stats.get(name), sparsity, pattern, reconstruct)
        set_linear_weight(module, new_W.to(module.weight.dtype))
    return masks


def validate(mode: str, allocation: str, pattern: SparsityPattern, sparsity: float) -> float:
    """The effective sparsity (N:M fixes it), or a BadInputError."""
    if mode not in MODES:
        raise BadInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if pattern.structured:
        if allocation != "uniform":
            raise BadInputError(f"pattern {pattern} fixes every layer's sparsity: use allocation 'uniform'")
        return pattern.sparsity
    if not 0.0 < sparsity < 1.0:
        raise BadInputError(f"sparsity must be in (0, 1), got {sparsity}")
    return sparsity


def stats_suffice(stats: Optional[dict[str, ActivationStats]], *, gram: bool, grad: bool) -> bool:
    if stats is None:
        return False
    return all((not gram or s.gram is not None) and (not grad or s.grad is not None) for s in stats.values())


def prune_model(model: nn.Module, calibration: WindowSet, *, method: Method, sparsity: float,
                pattern: Union[str, SparsityPattern] = "unstructured", allocation: str = "uniform",
                mode: str = "sequential", reconstruct: Union[bool, str] = False,
                allocation_hyper: Optional[dict] = None,
                progress: bool = True, dense_stats: Optional[dict[str, ActivationStats]] = None,
                cache_dir=None, onloader: Optional[BlockOnloader] = None) -> PruneResult:
    """Prune `model` in place. `dense_stats` (from `collect_activation_stats`) may be shared across runs.
    `reconstruct`: "none" | "obs" | "exact" (True = "obs"). `onloader`: the blocks are offloaded
    (sequential mode and an allocation without dense profiles only; `masks` stays empty)."""
    started = time.perf_counter()
    reconstruct = reconstruction_name(reconstruct)
    pattern = as_pattern(pattern)
    check_pattern_fits_model(model, pattern)
    sparsity = validate(mode, allocation, pattern, sparsity)
    precomputed = isinstance(method, PrecomputedMasks)
    refits = reconstruct != "none"
    needs_gram = refits or (method.needs_gram and not precomputed)
    needs_dense = not precomputed and (mode == "one-shot" or method.needs_grad or needs_profiles(allocation))
    if precomputed and refits and mode == "one-shot":
        needs_dense = True
    if onloader is not None and (needs_dense or precomputed):
        raise BadInputError("offloaded pruning runs one block at a time: it needs sequential mode, a metric or "
                            "layer pruner without gradients, and an allocation without dense profiles")
    if needs_dense and not stats_suffice(dense_stats, gram=needs_gram and mode == "one-shot",
                                         grad=method.needs_grad):
        dense_stats = collect_activation_stats(model, calibration, with_gram=needs_gram and mode == "one-shot",
                                               with_grad=method.needs_grad, cache_dir=cache_dir, progress=progress)
    calibrated = time.perf_counter()
    if precomputed:
        block_sparsity, profiles = method.block_sparsity(model), None
    else:
        profile_metric = method if isinstance(method, Metric) and not hasattr(method, "prune_layer") else None
        block_sparsity, profiles = plan_block_sparsity(model, sparsity, allocation, stats=dense_stats,
                                                       profile_metric=profile_metric, hyper=allocation_hyper)
    masks, layer_sparsity = run_layer_loop(model, calibration, method, mode, dense_stats, block_sparsity, pattern,
                                           reconstruct, needs_gram, progress, onloader)
    done = time.perf_counter()
    # Without masks, the overall sparsity is the size-weighted mean of the layers' (PruneResult reads masks).
    extras = {} if onloader is None else {"offloaded": True,
                                          "overall_sparsity": weighted_sparsity(model, layer_sparsity)}
    return PruneResult(
        masks=masks, layer_sparsity=layer_sparsity,
        block_sparsity=block_sparsity, block_profiles=profiles, target_sparsity=sparsity,
        method=method.name, allocation=allocation if not precomputed else "precomputed", pattern=str(pattern),
        mode=mode, reconstruct=reconstruct, calibration=calibration.description,
        timings={"calibration_s": calibrated - started, "pruning_s": done - calibrated, "total_s": done - started},
        peak_rss_mb=peak_rss_mb(), extras=extras)


def weighted_sparsity(model: nn.Module, layer_sparsity: dict[str, float]) -> float:
    sizes = {name: linear_weight(module).numel() for name, (_, module) in target_linears(model).items()}
    return sum(layer_sparsity[n] * sizes[n] for n in layer_sparsity) / max(sum(sizes.values()), 1)


def run_layer_loop(model, calibration, method, mode, dense_stats, block_sparsity, pattern, reconstruct,
                   needs_gram, progress, onloader=None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """(masks, layer sparsity); with an `onloader`, each block is materialised, pruned, saved and
    released in turn and no mask is kept."""
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    targets = target_linears(model)
    names_of = {i: [n for n, (b, _) in targets.items() if b == i] for i in range(len(blocks))}
    needs_stats = not isinstance(method, PrecomputedMasks) or reconstruct != "none"
    sequential = mode == "sequential" and needs_stats
    inputs = capture_block_inputs(model, calibration) if sequential else None
    masks: dict[str, Tensor] = {}
    layer_sparsity: dict[str, float] = {}
    for i in progress_bar(range(len(blocks)), f"pruning ({method.name})", enabled=progress):
        names = names_of[i]
        if onloader is not None:
            onloader.onload(i)
        if sequential:
            stats = block_stats(blocks[i], inputs, {n: targets[n][1] for n in names}, i, len(blocks), needs_gram)
            for n in names:
                if dense_stats is not None and dense_stats[n].grad is not None:
                    stats[n].grad = dense_stats[n].grad
        else:
            stats = {n: dense_stats[n] for n in names} if dense_stats is not None else {}
        block_masks = prune_block(model, method, names, stats, block_sparsity[i], pattern, reconstruct)
        layer_sparsity.update({n: mask_sparsity(m) for n, m in block_masks.items()})
        if sequential:
            inputs = run_block(blocks[i], inputs)
        if onloader is None:
            masks.update(block_masks)
        else:
            onloader.offload(i, save=True)
    return masks, layer_sparsity


def block_stats(block: nn.Module, inputs, modules: dict[str, nn.Module], index: int, num_layers: int,
                with_gram: bool) -> dict[str, ActivationStats]:
    """Statistics of one block's linears on the current (already partly pruned) inputs."""
    with stat_hooks(modules, with_gram=with_gram) as running:
        run_block(block, inputs)
    return finish_stats(running, {n: index for n in modules}, num_layers)
