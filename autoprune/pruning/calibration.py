"""Calibration statistics of every target linear's inputs (and optional gradients).

What is computed is the candidate contract's (autoprune/pruning/contract.py): the
per-channel statistics, diag(XᵀX), and on request (`with_hessian`) its damped inverse's diagonal.

`collect_activation_stats` is the one-shot pass on the dense model (DESIGN §2):
forward hooks on each target linear accumulate `RunningChannelStats`; an
optional backward pass of the LM loss gives per-weight gradient magnitudes
(Pruner-Zero's G). Results are cached on disk (safetensors + json) under a key
that hashes the model, the windows and the flags.

For the sequential loop, `capture_block_inputs` records what block 0 receives
(hidden states) and what the model passes each block beside them (position
embeddings, attention masks, sliding-window masks), and `run_block` pushes those
inputs through one block at a time.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import nn

from autoprune.adapters import ArchitectureAdapter, adapter_for, linear_weight
from autoprune.data import WindowSet
from autoprune.progress import progress_bar
from autoprune.pruning.sparsegpt import damped_inverse_hessian
from autoprune.pruning.stats import ActivationStats, RunningChannelStats

CACHE_VERSION = 3               # 2: hess_diag, hinv_diag; 3: one XᵀX per layer input
GramSelection = Union[bool, tuple[str, ...]]
BATCH_SIZE = 4


def target_linears(model: nn.Module) -> dict[str, tuple[int, nn.Module]]:
    """Full module name -> (block index, module) for every pruning target, in forward order."""
    adapter = adapter_for(model)
    out = {}
    for index, block in enumerate(adapter.blocks(model)):
        for dotted, module in adapter.linears(block).items():
            out[f"{adapter.blocks_path}.{index}.{dotted}"] = (index, module)
    return out


def wants_gram(name: str, selection: GramSelection) -> bool:
    """`selection` is True/False for every linear, or the name endings that get XᵀX
    (("self_attn.o_proj", "mlp.down_proj") for structured refits: a 7B model's full set is ~28 GB)."""
    if isinstance(selection, bool):
        return selection
    return any(name.endswith("." + suffix) for suffix in selection)


class SharedInputs:
    """One RunningChannelStats per distinct layer INPUT: linears that read the same tensor (q/k/v,
    gate/up) share one, so XᵀX is accumulated (and stored, and factored) once per input.

    Found at run time, for any architecture: a linear whose hook sees the very tensor object the
    previous hook saw joins that hook's accumulator (when both want XᵀX or both do not)."""

    def __init__(self, widths: dict[str, int], with_gram: GramSelection):
        self.widths, self.with_gram = widths, with_gram
        self.running: dict[str, RunningChannelStats] = {}
        self._last: Optional[tuple[torch.Tensor, RunningChannelStats]] = None

    def update(self, name: str, x: torch.Tensor) -> None:
        last, wants = self._last, wants_gram(name, self.with_gram)
        same = last is not None and last[0] is x and (last[1].gram is not None) == wants
        if name not in self.running:
            self.running[name] = last[1] if same else RunningChannelStats(self.widths[name], with_gram=wants)
            if same:
                return
        elif same and self.running[name] is last[1]:
            return                                  # this input was counted by the linear before
        self._last = (x, self.running[name])
        self.running[name].update(x.detach().cpu())


@contextmanager
def stat_hooks(modules: dict[str, nn.Module], *, with_gram: GramSelection) -> Iterator[dict[str, RunningChannelStats]]:
    """Forward hooks that feed each module's input into a RunningChannelStats (one per distinct
    input, `SharedInputs`), removed on exit. Statistics live on the CPU whatever the model's device
    (they are small next to the model)."""
    shared = SharedInputs({name: linear_weight(m).shape[1] for name, m in modules.items()}, with_gram)
    handles = [m.register_forward_hook(lambda mod, args, out, n=name: shared.update(n, args[0]))
               for name, m in modules.items()]
    try:
        yield shared.running
    finally:
        for handle in handles:
            handle.remove()


def finish_stats(running: dict[str, RunningChannelStats], block_of: dict[str, int],
                 num_layers: int) -> dict[str, ActivationStats]:
    """Per linear; linears that shared an accumulator share its XᵀX tensor (one object)."""
    grams: dict[int, Optional[torch.Tensor]] = {}
    out = {}
    for name, r in running.items():
        stats = r.finish(layer_index=block_of[name], num_layers=num_layers, name=name.rsplit(".", 1)[-1])
        stats.gram = grams.setdefault(id(r), stats.gram)
        out[name] = stats
    return out


def add_hessian_stats(stats: ActivationStats) -> None:
    """The contract's fields derived from XᵀX (`needs="hessian"`): hinv_diag = diag((XᵀX + λI)⁻¹)
    with SparseGPT's damping. (hess_diag = Σ X_j² needs no gram: `RunningChannelStats` gives it.)
    One Cholesky per layer (about 1 s at in = 1536 on one core), hence opt-in."""
    stats.hinv_diag = torch.diagonal(damped_inverse_hessian(stats.gram)).to(torch.float32)


def add_hessian_stats_shared(stats: dict[str, ActivationStats]) -> None:
    """`add_hessian_stats` once per distinct XᵀX (layers that read one input share it)."""
    done: dict[int, ActivationStats] = {}
    for s in stats.values():
        first = done.setdefault(id(s.gram), s)
        if first is s:
            add_hessian_stats(s)
        else:
            s.hinv_diag = first.hinv_diag.clone()       # per layer, like every vector field


def batches(windows: WindowSet, batch_size: int = BATCH_SIZE) -> list[torch.Tensor]:
    return [windows.ids[i: i + batch_size] for i in range(0, len(windows), batch_size)]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def forward_pass(model: nn.Module, windows: WindowSet, progress: bool) -> None:
    device = model_device(model)
    for ids in progress_bar(batches(windows), "calibration", enabled=progress):
        model(ids.to(device), use_cache=False)


def window_gradients(model: nn.Module, weights: dict[str, torch.Tensor], windows: WindowSet,
                     progress: bool, label: str = "gradients") -> Iterator[dict[str, torch.Tensor]]:
    """One backward pass of the LM loss per calibration window; yields {name: dL/dW} for `weights`
    (the only parameters that require gradients meanwhile; each flag is restored afterwards)."""
    params = list(model.parameters())
    was_trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    device = model_device(model)
    try:
        for ids in progress_bar(batches(windows, 1), label, enabled=progress):
            ids = ids.to(device)
            model(ids, labels=ids, use_cache=False).loss.backward()
            yield {name: w.grad for name, w in weights.items()}
            for w in weights.values():
                w.grad = None
    finally:
        for p, flag in zip(params, was_trainable):
            p.requires_grad_(flag)


def gradient_magnitudes(model: nn.Module, windows: WindowSet, modules: dict[str, nn.Module],
                        progress: bool) -> dict[str, torch.Tensor]:
    """ℓ2 over calibration windows of dL/dW per weight, (out, in) layout (Pruner-Zero's G)."""
    targets = {name: m.weight for name, m in modules.items()}
    squares = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in targets.items()}
    for grads in window_gradients(model, targets, windows, progress):
        for name, grad in grads.items():
            squares[name] += grad.float() ** 2
    return {name: as_out_in(modules[name], sq.sqrt().cpu()) for name, sq in squares.items()}


def as_out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor in the module's weight layout, returned as (out_features, in_features)."""
    return tensor.T.contiguous() if type(module).__name__ == "Conv1D" else tensor


def collect_activation_stats(model: nn.Module, windows: WindowSet, *, with_gram: GramSelection = False,
                             with_grad: bool = False, with_hessian: bool = False,
                             cache_dir: Optional[Path | str] = None,
                             progress: bool = False) -> dict[str, ActivationStats]:
    """Statistics of every target linear's inputs on the dense model, keyed by full module name.

    `with_hessian`: also the contract's XᵀX-derived fields (X.hinv_diag) of every layer; XᵀX
    itself is kept only where `with_gram` selects it."""
    targets = target_linears(model)
    key = cache_key(model, windows, with_gram=with_gram, with_grad=with_grad, with_hessian=with_hessian)
    if cache_dir is not None:
        cached = load_cached_stats(Path(cache_dir), key)
        if cached is not None:
            return cached
    modules = {name: m for name, (_, m) in targets.items()}
    with stat_hooks(modules, with_gram=with_hessian or with_gram) as running:
        forward_pass(model, windows, progress)
    block_of = {name: index for name, (index, _) in targets.items()}
    stats = finish_stats(running, block_of, len(adapter_for(model).blocks(model)))
    if with_hessian:
        add_hessian_stats_shared(stats)
        for name, s in stats.items():
            s.gram = s.gram if wants_gram(name, with_gram) else None
    if with_grad:
        for name, grad in gradient_magnitudes(model, windows, modules, progress).items():
            stats[name].grad = grad
    if cache_dir is not None:
        save_cached_stats(Path(cache_dir), key, stats, windows)
    return stats


def weight_fingerprint(model: nn.Module) -> str:
    """Hash of the first and last target weights: a pruned model never hits the dense cache."""
    names = list(target_linears(model).values())
    digest = hashlib.sha256()
    for _, module in (names[0], names[-1]):
        digest.update(module.weight.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(model: nn.Module, windows: WindowSet, *, with_gram: GramSelection, with_grad: bool,
              with_hessian: bool = False) -> str:
    ids_hash = hashlib.sha256(windows.ids.numpy().tobytes()).hexdigest()[:16]
    parts = {"v": CACHE_VERSION, "model": getattr(model.config, "_name_or_path", ""),
             "weights": weight_fingerprint(model), "windows": windows.description, "ids": ids_hash,
             "shape": list(windows.ids.shape), "gram": with_gram if isinstance(with_gram, bool) else sorted(with_gram), "grad": with_grad,
             "hessian": with_hessian}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def save_cached_stats(folder: Path, key: str, stats: dict[str, ActivationStats], windows: WindowSet) -> None:
    """One safetensors file + json; an XᵀX shared by several layers is written once (`gram_of`)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors, owner_of, layers = {}, {}, {}
    for name, s in stats.items():
        owner = owner_of.setdefault(id(s.gram), name) if s.gram is not None else name
        tensors.update(s.to_tensors(name, skip=("gram",) if owner != name else ()))
        layers[name] = {"layer_index": s.layer_index, "num_layers": s.num_layers, "name": s.name,
                        "nsamples": s.nsamples, **({"gram_of": owner} if owner != name else {})}
    save_file(tensors, str(folder / f"{key}.safetensors.tmp"))
    (folder / f"{key}.safetensors.tmp").replace(folder / f"{key}.safetensors")
    (folder / f"{key}.json").write_text(json.dumps({"windows": windows.description, "layers": layers}, indent=1))


def load_cached_stats(folder: Path, key: str) -> Optional[dict[str, ActivationStats]]:
    from safetensors.torch import load_file

    meta_path, data_path = folder / f"{key}.json", folder / f"{key}.safetensors"
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    tensors = load_file(str(data_path))
    layers = json.loads(meta_path.read_text())["layers"]
    stats = {}
    for name, info in layers.items():
        info = dict(info)
        owner = info.pop("gram_of", None)
        stats[name] = ActivationStats.from_tensors(tensors, name, **info)
        if owner is not None:
            shared = stats[owner].gram if owner in stats else None
            if shared is None or shared.shape != (stats[name].in_features,) * 2:
                return None                  # not what save_cached_stats writes: computed again
            stats[name].gram = shared
    return stats


class _StopForward(Exception):
    """Raised by the pre-hook on the last block once every block's call arguments are captured."""


@dataclass
class BlockInput:
    """One batch's input to a decoder block: hidden states plus the other call arguments.

    `calls` holds the arguments the model passes each block beside the hidden states (masks,
    position embeddings): they differ between blocks in models that mix sliding-window and
    full attention (Gemma 2/3, Mistral-style layer types), so each block gets its own."""

    hidden: torch.Tensor
    calls: list[tuple[tuple, dict]]   # (positional args after hidden, keyword args) of block 0, 1, ...
    position: int = 0                 # the block these hidden states enter

    @property
    def args(self) -> tuple:
        return self.calls[min(self.position, len(self.calls) - 1)][0]

    @property
    def kwargs(self) -> dict:
        return self.calls[min(self.position, len(self.calls) - 1)][1]


def _passthrough(hidden_states=None, *args, **kwargs):
    """Stands in for a block's forward while its arguments are recorded: no block computes."""
    return hidden_states


@torch.no_grad()
def capture_block_inputs(model: nn.Module, windows: WindowSet, *,
                         batch_size: int = BATCH_SIZE) -> list[BlockInput]:
    """What block 0 receives for each batch of windows (embeddings), and what the model passes
    every block beside it (position information, masks), recorded by pre-hooks in one
    embedding-only pass: the blocks' forwards are stood in for meanwhile."""
    blocks = adapter_for(model).blocks(model)
    captured: list[BlockInput] = []

    def hook(module, args, kwargs, index):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if index == 0:
            captured.append(BlockInput(hidden.detach(), []))
        captured[-1].calls.append((tuple(args[1:]), kwargs))
        if index == len(blocks) - 1:
            raise _StopForward

    handles = [block.register_forward_pre_hook(lambda m, a, k, i=i: hook(m, a, k, i), with_kwargs=True)
               for i, block in enumerate(blocks)]
    own_forwards = [block.__dict__.get("forward") for block in blocks]   # e.g. accelerate's device hooks
    for block in blocks:
        block.forward = _passthrough
    device = model_device(model)
    try:
        for ids in batches(windows, batch_size):
            try:
                model(ids.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for handle, block, own in zip(handles, blocks, own_forwards):
            handle.remove()
            del block.forward
            if own is not None:
                block.forward = own
    return captured


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[BlockInput]) -> list[BlockInput]:
    """Each batch through `block`; the outputs become the next block's inputs."""
    output = ArchitectureAdapter.block_output
    return [BlockInput(output(block(x.hidden, *x.args, **x.kwargs)), x.calls, x.position + 1) for x in inputs]
