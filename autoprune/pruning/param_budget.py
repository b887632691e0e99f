"""Parameter budgets for structured pruning: rate vectors ↔ fraction of decoder parameters kept.

Structured pruning removes whole KV groups (with their query heads) and MLP channels in
multiples of 8; `structure_for_rates` lets the MLP absorb the KV rounding, so a layer keeps
about `1 - rate` of its linear weights, but not exactly (8-channel steps, the one-KV-group
floor, norms that are never pruned). These functions count what `prune_structured` would keep,
from the config alone, so reports state the achieved fraction, not the asked one.
"""

from __future__ import annotations

from autoprune.adapters import adapter_for
from autoprune.errors import BadInputError
from autoprune.pruning.structured import LayerStructure, attention_geometry, mlp_width, structure_for_rates


def linear_param_sizes(model) -> tuple[int, int]:
    """(weights per KV group: q and o of its heads, k and v; weights per MLP channel: gate and up rows,
    the down column). Read once per count: the geometry check walks block 0's parameters."""
    head_dim, _, group_size = attention_geometry(model)
    hidden = model.config.hidden_size
    return (2 * group_size + 2) * head_dim * hidden, (3 if adapter_for(model).has("gate") else 2) * hidden


def layer_linear_params(model, layer: LayerStructure, sizes: tuple[int, int] | None = None) -> int:
    """Weights of one decoder layer's linears at the given sizes (q, k, v, o, (gate,) up, down)."""
    per_group, per_channel = sizes or linear_param_sizes(model)
    return layer.kv_groups * per_group + per_channel * layer.intermediate


def dense_structure(model) -> list[LayerStructure]:
    _, kv_heads, _ = attention_geometry(model)
    return [LayerStructure(mlp_width(model), kv_heads)] * len(adapter_for(model).blocks(model))


def decoder_totals(model) -> tuple[int, int]:
    """(all decoder parameters, those outside the prunable linears: norms, biases) of the dense model."""
    blocks = adapter_for(model).blocks(model)
    sizes = linear_param_sizes(model)
    dense_linears = sum(layer_linear_params(model, s, sizes) for s in dense_structure(model))
    total = sum(p.numel() for block in blocks for p in block.parameters())
    return total, total - dense_linears


def kept_parameter_fraction(model, rates: list[float], totals: tuple[int, int] | None = None) -> float:
    """Fraction of the decoder's parameters `prune_structured(model, rates)` keeps (norms included).

    `model` must be the dense model; pass `totals` (from `decoder_totals`) to skip recounting."""
    total, others = totals or decoder_totals(model)
    sizes = linear_param_sizes(model)
    kept = sum(layer_linear_params(model, s, sizes) for s in structure_for_rates(model, rates)) + others
    return kept / total


def mean_rate_for_params(model, keep_fraction: float, *, high: float = 0.9, step: float = 0.001) -> tuple[float, float]:
    """(uniform rate, fraction it keeps) closest to keeping `keep_fraction` of the decoder's parameters.

    The map is a fine step function (8-channel steps), so the achieved fraction is returned
    for the report to state.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise BadInputError(f"--target-params must be in (0, 1], got {keep_fraction}")
    layers = model.config.num_hidden_layers
    totals = decoder_totals(model)
    best = (0.0, 1.0)
    for i in range(int(round(high / step)) + 1):
        rate = i * step
        kept = kept_parameter_fraction(model, [rate] * layers, totals)
        if abs(kept - keep_fraction) < abs(best[1] - keep_fraction) - 1e-12:
            best = (rate, kept)
    return best
