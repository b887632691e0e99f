"""Sequential onloading: a model whose decoder blocks stay in its folder's safetensors files and
are materialised one at a time, so memory is bounded by one block (plus embeddings and head).

The skeleton (`open_offloaded`) holds real embeddings, final norm, head and buffers; every
decoder block's parameters are on the `meta` device. `BlockOnloader.onload(i)` reads block i's
tensors from the folder (`safe_open` maps the file; only that block's bytes are read) or, once
it was pruned, from the onloader's work folder; `offload(i, save=True)` writes the block there
and returns its parameters to `meta`. llm-compressor prunes 70B models the same way (one layer
of a sequential pipeline on the device at a time); this is that shape for our one layer loop.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from autoprune.adapters import adapter_for
from autoprune.errors import BadInputError, ModelLoadError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (sharded index or one file)."""
    from safetensors import safe_open

    if (folder / INDEX).is_file():
        weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    if not (folder / SINGLE).is_file():
        raise ModelLoadError(f"{folder}: offloaded loading needs safetensors weights ({SINGLE} or {INDEX})")
    with safe_open(str(folder / SINGLE), framework="pt") as handle:
        return {name: folder / SINGLE for name in handle.keys()}


def read_tensors(files: dict[str, Path], names: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`names` read from their files in `dtype`, one file handle at a time (closed after)."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for path, wanted in by_file.items():
        with safe_open(str(path), framework="pt") as handle:
            for name in wanted:
                tensor = handle.get_tensor(name)
                out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


def release(module: nn.Module) -> None:
    """Every parameter of `module` back to `meta` (buffers stay): its memory is freed."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=False)


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS. glibc serves a block's tensors (under its 32 MB mmap
    threshold) from the heap and keeps the pages once they are freed, so without this the
    fragments of every released block pile up in RSS (measured: benchmarks/results/scale_memory.md)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):        # not glibc: nothing to hand back this way
        pass


class BlockOnloader:
    """Materialises the decoder blocks of an offloaded skeleton one at a time."""

    def __init__(self, model: nn.Module, files: dict[str, Path], dtype: torch.dtype, work_dir: Path):
        adapter = adapter_for(model)
        self.model, self.dtype, self.files = model, dtype, files
        self.blocks = adapter.blocks(model)
        self.prefix = adapter.blocks_path
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.peak_blocks, self.peak_bytes = 0, 0        # since the last `take_peaks`

    def materialised(self) -> tuple[int, int]:
        """(blocks holding real weights, their parameter bytes), read off the parameters themselves."""
        real = [[p for p in block.parameters() if not p.is_meta] for block in self.blocks]
        return sum(1 for params in real if params), sum(p.numel() * p.element_size() for ps in real for p in ps)

    def skeleton_bytes(self) -> int:
        """Bytes of the parameters outside the blocks (embeddings, final norm, head; a tied head once)."""
        in_blocks = {id(p) for p in self.blocks.parameters()}
        return sum(p.numel() * p.element_size() for p in self.model.parameters()
                   if id(p) not in in_blocks and not p.is_meta)

    def take_peaks(self) -> dict:
        """The most blocks / block parameter bytes materialised at once since the last call; resets them."""
        peaks = {"max_blocks": self.peak_blocks, "peak_block_bytes": self.peak_bytes}
        self.peak_blocks, self.peak_bytes = 0, 0
        return peaks

    def __len__(self) -> int:
        return len(self.blocks)

    def block_prefix(self, index: int) -> str:
        return f"{self.prefix}.{index}."

    def saved_block(self, index: int) -> Path:
        return self.work_dir / f"block-{index:05d}.safetensors"

    def onload(self, index: int) -> nn.Module:
        """Block `index` with real weights: its saved (pruned) copy when there is one, else the folder's."""
        from safetensors.torch import load_file

        block = self.blocks[index]
        saved = self.saved_block(index)
        if saved.is_file():
            state = load_file(str(saved))
        else:
            prefix = self.block_prefix(index)
            names = [n for n in self.files if n.startswith(prefix)]
            state = {n[len(prefix):]: t for n, t in read_tensors(self.files, names, self.dtype).items()}
        expected = block.state_dict().keys()          # older checkpoints also store buffers (rotary inv_freq)
        block.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True, assign=True)
        blocks, size = self.materialised()
        self.peak_blocks, self.peak_bytes = max(self.peak_blocks, blocks), max(self.peak_bytes, size)
        return block

    def offload(self, index: int, *, save: bool = False) -> None:
        """Release block `index`; with `save`, its current weights become the copy `onload` reads next."""
        from safetensors.torch import save_file

        block = self.blocks[index]
        if save:
            tmp = self.saved_block(index).with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in block.state_dict().items()}, str(tmp))
            tmp.replace(self.saved_block(index))
        release(block)
        return_freed_memory()


def offload_folder(spec: Optional[str]) -> Path:
    """The local safetensors folder that `prune --offload` reads `spec` (a `--model` value) from: the
    embedded default's converted folder, a local folder, or a hub id's snapshot (its files fetched to
    the hub cache as `from_pretrained` would, nothing loaded)."""
    from autoprune.models import EMBEDDED, embedded_model_dir, first_line, named_model_source

    if spec in (None, "", EMBEDDED):
        return embedded_model_dir()
    source, gguf_file = named_model_source(spec)
    if gguf_file:
        raise BadInputError(f"{spec}: offloaded loading needs a safetensors folder, not a .gguf file")
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                              "*.jinja"]))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not fetch model {spec!r}: {first_line(exc)}") from exc


def open_offloaded(model_dir: Union[str, Path], work_dir: Union[str, Path], *,
                   dtype: Union[str, torch.dtype, None] = None) -> tuple[nn.Module, BlockOnloader]:
    """(skeleton, onloader) of the causal LM in `model_dir`: nothing of a decoder block is read yet."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from autoprune.models import torch_dtype

    folder, dtype = Path(model_dir).expanduser(), torch_dtype(dtype)
    files = weight_files(folder)
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    onloader = BlockOnloader(model, files, dtype, Path(work_dir))
    resident = [n for n in files if not n.startswith(onloader.prefix + ".")]
    missing, _ = model.load_state_dict(read_tensors(files, resident, dtype), strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(onloader.prefix + ".")]
    if still_meta:
        raise ModelLoadError(f"{folder}: weights missing from the checkpoint: {', '.join(still_meta[:3])}")
    return model, onloader


def final_hidden_logits(model: nn.Module, ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits for `ids` when its last block put out `hidden`: the blocks stand aside
    (block 0 hands `hidden` on, the rest pass it through), so the model's own final norm and head
    run, whatever their names."""
    blocks = adapter_for(model).blocks(model)

    def first(*args, **kwargs):
        return hidden

    def passthrough(hidden_states=None, *args, **kwargs):
        return hidden_states

    for index, block in enumerate(blocks):
        block.forward = first if index == 0 else passthrough
    try:
        with torch.no_grad():
            return model(ids, use_cache=False).logits
    finally:
        for block in blocks:
            del block.forward

