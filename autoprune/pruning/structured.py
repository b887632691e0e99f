"""Structured pruning: remove MLP channels and attention heads so the model really shrinks.

Attention respects grouped-query attention: a key/value head and the query heads that
share it (one "KV group") are kept or removed together, so the per-layer ratio of query
to key/value heads never changes. Per-layer sizes are stored in the saved config
(`autoprune_structure`) and `load_structured_model` rebuilds the smaller modules.
Supported: any layout the adapter reads with separate q/k/v/o and MLP (gate,) up, down
nn.Linear projections (Llama, Qwen, Mistral, Gemma, OLMo, Granite, OPT, Phi, GPT-J, ...);
fused projections (qkv, gate_up: GPT-2, Falcon, GPT-NeoX, Bloom, Phi-3) are refused.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from autoprune.adapters import ArchitectureAdapter, adapter_for
from autoprune.errors import BadInputError, ModelLoadError
from autoprune.pruning.refit import DEFAULT_DAMP, refit_kept_columns
from autoprune.pruning.stats import ActivationStats
from autoprune.pruning.structured_importance import BlockImportance, activation_importance

STRUCTURE_KEY = "autoprune_structure"
REFIT_TARGETS = ("self_attn.o_proj", "mlp.down_proj")   # the linears whose inputs lose channels (Llama names)
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads")  # attention modules that keep head counts
KV_COUNT_ATTRS = ("num_key_value_heads", "num_kv_heads")


@dataclass
class LayerStructure:
    intermediate: int    # MLP channels kept
    kv_groups: int       # key/value heads kept (each with its query heads)


def structured_adapter(model) -> ArchitectureAdapter:
    """The model's adapter when its layout can be sliced, else one clear BadInputError."""
    adapter = adapter_for(model)
    if adapter.fused:
        raise BadInputError(f"structured pruning needs separate q/k/v and MLP projections; {adapter.family!r} "
                            f"fuses {', '.join(adapter.fused)}: prune it unstructured or N:M instead")
    block = adapter.blocks(model)[0]
    if any(not isinstance(m, nn.Linear) for m in adapter.linears(block).values()):
        raise BadInputError(f"structured pruning slices nn.Linear layers; {adapter.family!r} uses "
                            f"{type(next(iter(adapter.linears(block).values()))).__name__}")
    return adapter


def refit_targets(model) -> tuple[str, str]:
    """The block-relative names of the linears whose inputs lose channels (attention output, MLP down):
    calibrate with `with_gram=refit_targets(model)` to reconstruct."""
    adapter = adapter_for(model)
    return adapter.name_of("o"), adapter.name_of("down")


def attention_geometry(model) -> tuple[int, int, int]:
    """(head_dim, kv_heads, query heads per kv head) of the full model, read from block 0's shapes."""
    config, adapter = model.config, structured_adapter(model)
    block = adapter.blocks(model)[0]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_out = block.get_submodule(adapter.name_of("q")).out_features
    kv_out = block.get_submodule(adapter.name_of("k")).out_features
    norms = cross_head_norms(block, adapter, q_out, kv_out, head_dim)
    if norms:
        raise BadInputError(f"structured pruning cannot slice {adapter.family!r}: its attention normalizes "
                            f"across all heads ({', '.join(norms)})")
    return head_dim, kv_out // head_dim, q_out // kv_out


def cross_head_norms(block: nn.Module, adapter: ArchitectureAdapter, q_out: int, kv_out: int,
                     head_dim: int) -> list[str]:
    """Parameters of the attention module sized like a whole projection output (OLMo-2's q_norm):
    removing heads would change what they normalize over."""
    parent = adapter.name_of("q").rpartition(".")[0]
    attention = block.get_submodule(parent) if parent else block
    owned = {id(p) for linear in adapter.linears(block).values() for p in linear.parameters()}
    return [name for name, p in attention.named_parameters()
            if id(p) not in owned and p.dim() == 1 and p.numel() in (q_out, kv_out) and p.numel() != head_dim]


def mlp_width(model) -> int:
    adapter = adapter_for(model)
    return adapter.blocks(model)[0].get_submodule(adapter.name_of("up")).out_features


def keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in their original order (stable layout)."""
    return torch.sort(torch.topk(scores, keep).indices).values


def slice_linear(linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    bias = linear.bias.detach()[rows] if linear.bias is not None and rows is not None else linear.bias
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def head_rows(groups: torch.Tensor, per_group: int, head_dim: int) -> torch.Tensor:
    """Output rows of a projection for the kept groups (each `per_group` heads of `head_dim`)."""
    width = per_group * head_dim
    return torch.cat([torch.arange(g * width, (g + 1) * width) for g in groups.tolist()])


def refit_in_place(linear: nn.Linear, dense_weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor,
                   damp: float) -> None:
    if len(kept) == dense_weight.shape[1]:
        return                                   # nothing removed: keep the dense weight exactly
    with torch.no_grad():
        linear.weight.copy_(refit_kept_columns(dense_weight, gram, kept, damp=damp))


def set_linear(block: nn.Module, dotted: str, linear: nn.Linear) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, linear)


def set_head_counts(attention: nn.Module, heads: int, kv_heads: int) -> None:
    """Attention modules that reshape by a stored head count (OPT, GPT-J, StableLM) get the kept counts."""
    for names, value in ((HEAD_COUNT_ATTRS, heads), (KV_COUNT_ATTRS, kv_heads)):
        for name in names:
            if isinstance(getattr(attention, name, None), int):
                setattr(attention, name, value)


def prune_block(block: nn.Module, structure: LayerStructure, mlp_scores: torch.Tensor,
                group_scores: torch.Tensor, head_dim: int, group_size: int, adapter: ArchitectureAdapter, *,
                grams: Optional[dict[str, torch.Tensor]] = None, damp: float = DEFAULT_DAMP) -> None:
    """Slice one block to `structure`; with `grams` (XᵀX of the attention output and MLP down
    inputs, keyed by their block-relative names) those two projections are refitted on their kept inputs."""
    name = adapter.name_of
    get = block.get_submodule
    dense_down, dense_o = get(name("down")).weight, get(name("o")).weight
    channels = keep_top(mlp_scores, structure.intermediate)
    for role in ("gate", "up"):
        if adapter.has(role):
            set_linear(block, name(role), slice_linear(get(name(role)), rows=channels))
    set_linear(block, name("down"), slice_linear(get(name("down")), cols=channels))
    groups = keep_top(group_scores, structure.kv_groups)
    q_rows = head_rows(groups, group_size, head_dim)
    kv_rows = head_rows(groups, 1, head_dim)
    set_linear(block, name("q"), slice_linear(get(name("q")), rows=q_rows))
    set_linear(block, name("k"), slice_linear(get(name("k")), rows=kv_rows))
    set_linear(block, name("v"), slice_linear(get(name("v")), rows=kv_rows))
    set_linear(block, name("o"), slice_linear(get(name("o")), cols=q_rows))
    parent = name("q").rpartition(".")[0]
    set_head_counts(get(parent) if parent else block, structure.kv_groups * group_size, structure.kv_groups)
    if grams is not None:
        refit_in_place(get(name("down")), dense_down, grams[name("down")], channels, damp)
        refit_in_place(get(name("o")), dense_o, grams[name("o")], q_rows, damp)


def structure_for_rates(model, rates: list[float]) -> list[LayerStructure]:
    """Per-layer sizes for removal rates in [0, 1): a rate is the fraction of the layer's linear
    parameters removed. KV groups are whole (SmolLM2-135M has 3), so attention is rounded first
    and the MLP channels (multiples of 8) absorb the difference: the parameters kept then track
    `1 - rate` closely instead of jumping with the KV rounding. At least 8 channels and one KV
    group stay (so rates near 1 may keep a little more than asked)."""
    config = model.config
    head_dim, kv_heads, group_size = attention_geometry(model)
    layers, intermediate = len(adapter_for(model).blocks(model)), mlp_width(model)
    if len(rates) != layers:
        raise BadInputError(f"{len(rates)} rates for {layers} layers")
    if any(not 0.0 <= r < 1.0 or math.isnan(r) for r in rates):
        raise BadInputError("every layer rate must be in [0, 1)")
    per_group = (2 * group_size + 2) * head_dim * config.hidden_size     # q, o of its heads; k, v
    per_channel = (3 if adapter_for(model).has("gate") else 2) * config.hidden_size   # gate, up rows; down column
    full = kv_heads * per_group + intermediate * per_channel
    structure = []
    for r in rates:
        groups = max(1, round(kv_heads * (1 - r)))
        channels = ((1 - r) * full - groups * per_group) / per_channel
        channels = min(intermediate, max(8, round(channels / 8) * 8))
        structure.append(LayerStructure(intermediate=int(channels), kv_groups=groups))
    return structure


def refit_grams(stats: dict[str, ActivationStats], prefix: str, index: int,
                targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
    grams = {target: stats[f"{prefix}.{index}.{target}"].gram for target in targets}
    missing = [target for target, gram in grams.items() if gram is None]
    if missing:
        raise BadInputError(f"reconstruction needs XᵀX of {', '.join(missing)} in block {index}: "
                            f"calibrate with with_gram=refit_targets(model)")
    return grams


def prune_structured(model, rates: list[float], stats: dict[str, ActivationStats], *,
                     importance: Optional[list[BlockImportance]] = None, reconstruct: bool = False,
                     damp: float = DEFAULT_DAMP) -> list[LayerStructure]:
    """Remove channels and KV groups in place, per layer, by `rates`; returns the new structure.
    `importance` ranks the units (`structured_importance`; default: activation scores from `stats`);
    `reconstruct` refits o_proj and down_proj on their kept inputs (`autoprune.pruning.refit`)."""
    adapter = structured_adapter(model)
    head_dim, _, group_size = attention_geometry(model)
    structure = structure_for_rates(model, rates)
    importance = importance or activation_importance(model, stats, head_dim, group_size)
    prefix = adapter.blocks_path
    for index, (block, layer, scores) in enumerate(zip(adapter.blocks(model), structure, importance)):
        grams = refit_grams(stats, prefix, index, refit_targets(model)) if reconstruct else None
        prune_block(block, layer, scores.mlp, scores.kv_groups, head_dim, group_size, adapter, grams=grams,
                    damp=damp)
    setattr(model.config, STRUCTURE_KEY, [asdict(s) for s in structure])
    return structure


def pruned_copy(model, rates: list[float], stats: dict[str, ActivationStats], *,
                importance: Optional[list[BlockImportance]] = None, reconstruct: bool = False):
    """A structurally pruned deep copy; the dense model stays untouched for the next candidate."""
    clone = copy.deepcopy(model)
    prune_structured(clone, rates, stats, importance=importance, reconstruct=reconstruct)
    return clone.eval()


def decoder_parameter_count(model) -> int:
    adapter = adapter_for(model)
    return sum(p.numel() for block in adapter.blocks(model) for p in block.parameters())


def resize_to_structure(model, structure: list[dict]) -> None:
    """Replace full-size modules with empty ones of the saved per-layer sizes (before loading)."""
    head_dim, kv_heads, group_size = attention_geometry(model)
    adapter, intermediate = structured_adapter(model), mlp_width(model)
    for block, layer in zip(adapter.blocks(model), structure):
        size = LayerStructure(**layer)
        prune_block(block, size, torch.arange(intermediate, 0, -1).float(),
                    torch.arange(kv_heads, 0, -1).float(), head_dim, group_size, adapter)


def load_structured_model(model_dir: str | Path, *, dtype: torch.dtype = torch.float32):
    """Load a model saved after `prune_structured` (plain from_pretrained would refuse its shapes)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(model_dir)
    config = AutoConfig.from_pretrained(folder)
    structure = getattr(config, STRUCTURE_KEY, None)
    if not structure:
        raise ModelLoadError(f"{folder} has no '{STRUCTURE_KEY}' in its config: load it with transformers directly")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    resize_to_structure(model, structure)
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
    if missing or unexpected:
        raise ModelLoadError(f"{folder}: weights do not fit the saved structure "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def save_structure_summary(structure: list[LayerStructure], folder: Path) -> None:
    (Path(folder) / "structure.json").write_text(json.dumps([asdict(s) for s in structure], indent=2))
