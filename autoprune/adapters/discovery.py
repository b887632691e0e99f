"""Find a causal LM's decoder blocks and their prunable linears from its module tree.

The decoder stack is the largest `nn.ModuleList` of same-class blocks holding linear layers
(nn.Linear or GPT-2's Conv1D). Inside a block every linear must have a known role
(`roles.role_of`), the roles must form an attention part (q, k, v or a fused qkv, and an
output projection) and an MLP part (up or a fused gate_up, optional gate, down), and the
shapes must agree with the hidden size. Anything else is refused with one line that says
what was found: a layout we do not understand is never pruned by guesswork.
"""

from __future__ import annotations

from torch import nn

from autoprune.adapters.layout import ROLES, ArchitectureAdapter, is_linear, linear_weight
from autoprune.adapters.roles import role_of
from autoprune.errors import BadInputError, ModelLoadError

READS_HIDDEN = ("q", "k", "v", "qkv", "gate", "up", "gate_up")   # in_features == hidden size
WRITES_HIDDEN = ("o", "down")                                    # out_features == hidden size


class UnsupportedArchitectureError(ModelLoadError, BadInputError):
    """The model's layout is not one the adapter understands (exit code 2 like every AutopruneError)."""


def describe(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"model type {model_type!r} ({type(model).__name__})"


def refuse(model: nn.Module, reason: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(f"cannot prune {describe(model)}: {reason}")


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in block.named_modules() if name and is_linear(module)}


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of the decoder stack: the biggest list of alike blocks with linears."""
    found = [(path, modules) for path, modules in model.named_modules()
             if isinstance(modules, nn.ModuleList) and len(modules) > 0
             and len({type(b) for b in modules}) == 1 and block_linears(modules[0])]
    if not found:
        raise refuse(model, "no nn.ModuleList of repeated blocks holding linear layers")
    return max(found, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def weights_outside_linears(block: nn.Module) -> list[str]:
    """Matrix-shaped parameters that no target linear owns (mixture-of-experts banks, convolutions)."""
    owned = {f"{name}.weight" for name in block_linears(block)}
    return [f"{name} {tuple(p.shape)}" for name, p in block.named_parameters()
            if p.dim() >= 2 and name not in owned]


def layout_problem(roles: dict[str, str]) -> str | None:
    """What is missing or doubled in a block's roles (name -> role), or None when it is a standard layout."""
    present = list(roles.values())
    doubled = sorted({r for r in present if present.count(r) > 1})
    if doubled:
        return f"more than one linear with role {', '.join(doubled)}"
    has = set(present).__contains__
    separate_qkv = has("q") and has("k") and has("v")
    if not (separate_qkv or has("qkv")) or (has("qkv") and (has("q") or has("k") or has("v"))) or not has("o"):
        return "no attention q/k/v (or fused qkv) and output projection"
    if not has("down") or not (has("up") or has("gate_up")) or (has("gate_up") and (has("gate") or has("up"))):
        return "no MLP up (or fused gate_up) and down projection"
    if has("gate") and not has("up"):
        return "an MLP gate without an up projection"
    return None


def shape_problem(linears: dict[str, nn.Module], roles: dict[str, str], hidden: int) -> str | None:
    for name, role in roles.items():
        out_features, in_features = linear_weight(linears[name]).shape
        if role in READS_HIDDEN and in_features != hidden:
            return f"{name} ({role}) reads {in_features} features, the hidden size is {hidden}"
        if role in WRITES_HIDDEN and out_features != hidden:
            return f"{name} ({role}) writes {out_features} features, the hidden size is {hidden}"
    return None


def hidden_size(model: nn.Module, linears: dict[str, nn.Module], roles: dict[str, str]) -> int:
    """config.hidden_size, else what the attention output projection writes."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(size, int):
        return size
    return linear_weight(linears[next(name for name, role in roles.items() if role == "o")]).shape[0]


def found_summary(linears: dict[str, nn.Module]) -> str:
    return ", ".join(f"{name} {tuple(linear_weight(m).shape)}" for name, m in linears.items())


def discover_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter read from `model`'s module tree, or an UnsupportedArchitectureError saying what was found."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise refuse(model, "encoder-decoder models are not supported (decoder-only causal LMs are)")
    path, blocks = find_block_list(model)
    linears = block_linears(blocks[0])
    where = f"block {path}.0"
    extra = weights_outside_linears(blocks[0])
    if extra:
        raise refuse(model, f"{where} holds weights outside linear layers ({', '.join(extra[:4])}); "
                            "mixture-of-experts and other non-linear layouts are not supported")
    unknown = [name for name in linears if role_of(name) is None]
    if unknown:
        raise refuse(model, f"{where}: no attention/MLP role for {', '.join(unknown)} (found {found_summary(linears)})")
    roles = {name: role_of(name) for name in linears}
    problem = layout_problem(roles) or shape_problem(linears, roles, hidden_size(model, linears, roles))
    if problem:
        raise refuse(model, f"{where}: {problem} (found {found_summary(linears)})")
    for index, block in enumerate(blocks):
        if set(block_linears(block)) != set(linears):
            raise refuse(model, f"block {path}.{index} has other linears than block {path}.0")
    ordered = sorted(linears, key=lambda name: ROLES.index(roles[name]))
    model_type = getattr(model.config, "model_type", None) or type(model).__name__
    return ArchitectureAdapter(family=model_type, blocks_path=path, linear_names=tuple(ordered),
                               model_types=(model_type,), roles=tuple(roles[n] for n in ordered))
