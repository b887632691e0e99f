"""Save a pruned model so plain transformers loads it, plus a summary.json.

The zeros are stored as ordinary dense safetensors (what every runtime reads);
`summary.json` records how they were chosen: method, allocation, pattern,
per-layer sparsity, protocol and perplexities. An offloaded model is written block by block.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from autoprune.errors import BadInputError
from autoprune.pruning.onload import INDEX, BlockOnloader

SUMMARY = "summary.json"
REST_SHARD = "model-rest.safetensors"        # an offloaded export: embeddings, norms, head


def export_pruned_model(model: nn.Module, tokenizer, out_dir: Path | str, summary: dict) -> Path:
    """Write `model` (safetensors), its tokenizer and `summary.json` into `out_dir`."""
    out = prepared_folder(out_dir)
    # Tied embeddings are shared tensors; save_pretrained handles them (safe_serialization).
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    return out


def export_offloaded_model(onloader: BlockOnloader, tokenizer, out_dir: Path | str, summary: dict) -> Path:
    """`export_pruned_model` for an offloaded model (autoprune.pruning.onload): a sharded safetensors
    checkpoint written one block at a time (one shard per block plus one for the rest), so memory
    stays bounded by one block here too."""
    from safetensors.torch import save_file

    out = prepared_folder(out_dir)
    model = onloader.model
    model.config.save_pretrained(out)
    weight_map: dict[str, str] = {}
    resident, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.is_meta or tensor.data_ptr() in seen:       # a block's, or a tied copy of the embeddings
            continue
        seen.add(tensor.data_ptr())
        resident[name] = tensor.contiguous()
    save_file(resident, str(out / REST_SHARD), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(resident, REST_SHARD))
    for index in range(len(onloader)):
        block = onloader.onload(index)
        prefix, file = onloader.block_prefix(index), f"model-block-{index:05d}.safetensors"
        tensors = {prefix + k: v.contiguous() for k, v in block.state_dict().items()}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        onloader.offload(index)
    total = sum(t.numel() * t.element_size() for t in resident.values())
    total += sum(p.numel() * p.element_size() for p in onloader.blocks.parameters())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    return out


def prepared_folder(out_dir: Path | str) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_summary(model_dir: Path | str) -> dict | None:
    path = Path(model_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None
