"""A pruned export rewritten as a `compressed-tensors` checkpoint, and read back.

`compress_checkpoint` takes a dense export (autoprune.pruning.export, resident or offloaded) and
rewrites its safetensors shards one at a time with compressed-tensors' own sparsity compressors:
`sparse-24-bitmask` when every pruned linear is 2:4, else `sparse-bitmask` (unstructured, other
N:M). config.json gets the `quantization_config` block llm-compressor writes (quant_method
compressed-tensors, `sparsity_config` with format, sparsity_structure, targets, ignore).

Pinned to compressed-tensors 0.13.0: 0.15+ removed the sparse compressors (only their config
classes remain), and 0.14 requires transformers<5. Transformers' own loader wants 0.15+ and no
longer decompresses sparsity, so `load_compressed_model` builds the model from its config and
fills it with the library's decompression. vLLM ran sparse-only checkpoints of this kind only
briefly (2:4 with cutlass, early 2025; unstructured bitmask never), dropped 2:4 in 0.19.1 and
refuses every sparse compressed-tensors checkpoint since 0.24: to serve, use the dense export.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from autoprune.errors import BadInputError, ModelLoadError
from autoprune.models import first_line
from autoprune.pruning.pattern import SparsityPattern

if TYPE_CHECKING:         # torch loads where work starts: `check_export_format` answers a flag at once
    import torch
    from torch import nn

BITMASK, BITMASK_24 = "sparse-bitmask", "sparse-24-bitmask"
FORMATS = (BITMASK, BITMASK_24)                 # what a reload accepts: an allow-list, never a registry lookup
EXPORT_FORMATS = ("dense", "compressed-tensors")
CONFIG = "config.json"
QUANT_KEY, SPARSITY_KEY = "quantization_config", "sparsity_config"


def check_export_format(name: str, out: Optional[str]) -> str:
    """`--export-format` is known, and compressed-tensors has an --out to write to."""
    if name not in EXPORT_FORMATS:
        raise BadInputError(f"--export-format {name!r}: known: {', '.join(EXPORT_FORMATS)}")
    if name != "dense" and not out:
        raise BadInputError(f"--export-format {name} needs --out")
    return name


def compress_checkpoint(folder: Path | str, pattern: SparsityPattern | str) -> dict:
    """Rewrite the dense export in `folder` in place as a compressed-tensors checkpoint; returns what
    was written (also stored under summary.json's "export"). Memory: one shard at a time."""
    from safetensors.torch import load_file, save_file

    from autoprune.pruning.onload import INDEX, weight_files

    folder = Path(folder)
    pattern = SparsityPattern.parse(str(pattern))
    targets, ignore = sparse_targets(folder)
    files = weight_files(folder)
    target_weights = [f"{name}.weight" for name in targets if f"{name}.weight" in files]
    fmt, note = choose_format(pattern, files, target_weights)
    compressor = sparsity_compressor(fmt)
    zeros = total = 0
    weight_map: dict[str, str] = {}
    for shard in sorted(set(files.values())):
        state = load_file(str(shard))
        for name in target_weights:
            if name in state:
                zeros += int((state[name] == 0).sum())
                total += state[name].numel()
        packed = compressor.compress(state, compression_targets=set(targets))
        staged = shard.with_name(shard.name + ".partial")
        save_file({k: v.contiguous() for k, v in packed.items()}, str(staged), metadata={"format": "pt"})
        os.replace(staged, shard)
        weight_map.update(dict.fromkeys(packed, shard.name))
    if (folder / INDEX).is_file():
        size = sum(p.stat().st_size for p in set(files.values()))
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map},
                                               indent=1))
    record = {"format": "compressed-tensors", "sparsity_format": fmt, "pattern": str(pattern),
              "compressed_linears": len(target_weights), "global_sparsity": zeros / max(total, 1)}
    if note:
        record["fallback"] = note
    write_sparsity_config(folder, fmt, pattern, record["global_sparsity"], ignore)
    record_in_summary(folder, record)
    return record


def sparse_targets(folder: Path) -> tuple[list[str], list[str]]:
    """(pruned linears, other nn.Linear modules) of the model in `folder`, from its config alone
    (a meta-device skeleton: no weights are read)."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from autoprune.pruning.calibration import target_linears

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    targets = list(target_linears(model))
    pruned = set(targets)
    ignore = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in pruned]
    return targets, ignore


def choose_format(pattern: SparsityPattern, files: dict[str, Path], weights: list[str]) -> tuple[str, str]:
    """sparse-24-bitmask when the pattern is 2:4 and every pruned weight really is (the library's 2:4
    compressor keeps the 2 largest of each 4 and would silently drop a third non-zero); else bitmask,
    with the reason when 2:4 was asked for."""
    if str(pattern) != "2:4":
        return BITMASK, ""
    bad = next((name for name in weights if not is_two_four(read_tensor(files[name], name))), None)
    if bad is None:
        return BITMASK_24, ""
    return BITMASK, f"{bad} is not 2:4 along its rows: written as {BITMASK}"


def is_two_four(weight: torch.Tensor) -> bool:
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(-1, 4) != 0).sum(dim=1) <= 2).all())


def read_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


def sparsity_compressor(fmt: str):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.config import SparsityCompressionConfig

    return BaseCompressor.load_from_registry(fmt, config=SparsityCompressionConfig.load_from_registry(fmt))


def write_sparsity_config(folder: Path, fmt: str, pattern: SparsityPattern, global_sparsity: float,
                          ignore: list[str]) -> None:
    """config.json's compression block, written by the library's ModelCompressor.update_config."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import SparsityCompressionConfig

    structure = "2:4" if fmt == BITMASK_24 else "unstructured"
    config = SparsityCompressionConfig.load_from_registry(
        fmt, targets=["Linear"], ignore=ignore, global_sparsity=global_sparsity, sparsity_structure=structure)
    ModelCompressor(sparsity_config=config).update_config(str(folder))
    if pattern.structured and structure != "2:4":       # e.g. 4:8: the format has no name for it
        data = json.loads((folder / CONFIG).read_text())
        data[QUANT_KEY][SPARSITY_KEY]["autoprune_pattern"] = str(pattern)
        (folder / CONFIG).write_text(json.dumps(data, indent=2, sort_keys=True))


def record_in_summary(folder: Path, record: dict) -> None:
    from autoprune.pruning.export import SUMMARY, read_summary

    summary = read_summary(folder)
    if summary is not None:
        summary["export"] = record
        (folder / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))


# ---------------------------------------------------------------- reading one back


def is_compressed_checkpoint(folder: Path | str) -> bool:
    """Whether `folder`'s config.json declares compressed-tensors (which `load_compressed_model`, not
    plain transformers, reads): for a loader to route on."""
    try:
        block = json.loads((Path(folder).expanduser() / CONFIG).read_text()).get(QUANT_KEY)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(block, dict) and block.get("quant_method") == "compressed-tensors"


def load_compressed_model(folder: Path | str, *, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A compressed-tensors sparse checkpoint (ours or llm-compressor's, sparsity only) as a dense
    transformers model; anything malformed is one ModelLoadError naming the folder. Each stored
    shape is checked against the config's model before anything is decompressed (a forged shape
    cannot make the loader allocate more than the model)."""
    folder = Path(folder).expanduser()
    config, fmt = compressed_config(folder)
    model = built_model(folder, config, dtype)
    params = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers())}
    try:
        check_stored_shapes(folder, params)
        tensors = dict(sparsity_compressor(fmt).decompress(str(folder)))
    except ModelLoadError:
        raise
    except Exception as exc:                     # a corrupt shard, a bitmask of the wrong size, ...
        raise ModelLoadError(f"{folder}: cannot decompress the {fmt} weights ({first_line(exc)})") from None
    fill(folder, model, params, tensors)
    return model.eval()


def compressed_config(folder: Path):
    """(transformers config without the compression block, sparsity format), checked."""
    from transformers import AutoConfig

    try:
        data = json.loads((folder / CONFIG).read_text())
        block = data.pop(QUANT_KEY)
        fmt = (block.get(SPARSITY_KEY) or {}).get("format")
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ModelLoadError(f"{folder}: not a compressed-tensors checkpoint ({first_line(exc)})") from None
    if block.get("quant_method") != "compressed-tensors" or fmt not in FORMATS:
        raise ModelLoadError(f"{folder}: sparsity format {fmt!r} is not one this loader reads "
                             f"(known: {', '.join(FORMATS)})")
    if block.get("config_groups"):
        raise ModelLoadError(f"{folder}: quantized compressed-tensors checkpoints are not read here (sparsity only)")
    try:
        return AutoConfig.for_model(**data), fmt
    except Exception as exc:                     # transformers' many config errors: all one line
        raise ModelLoadError(f"{folder}: config.json: {first_line(exc)}") from None


def built_model(folder: Path, config, dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(config, dtype=dtype or getattr(config, "dtype", None))
    except Exception as exc:
        raise ModelLoadError(f"{folder}: cannot build the model from config.json ({first_line(exc)})") from None


def check_stored_shapes(folder: Path, params: dict) -> None:
    """Every compressed weight's stored `shape` is its parameter's shape in the config's model."""
    from autoprune.pruning.onload import weight_files

    files = weight_files(folder)
    for name in (n for n in files if n.endswith(".shape")):
        module = name.removesuffix(".shape")
        expected = params.get(module + ".weight")
        stored = read_tensor(files[name], name).flatten().tolist()
        if expected is None or stored != list(expected.shape):
            raise ModelLoadError(f"{folder}: {module} is stored with shape {stored}, the config's model has "
                                 f"{list(expected.shape) if expected is not None else 'no such weight'}")


def fill(folder: Path, model: nn.Module, params: dict, tensors: dict) -> None:
    """Copy `tensors` in: every parameter must be given (or tied to one that is) with its exact shape;
    an unknown name is refused."""
    import torch

    unknown = sorted(set(tensors) - set(params))
    wrong = [n for n, t in tensors.items() if n in params and tuple(t.shape) != tuple(params[n].shape)]
    given = {id(params[n]) for n in tensors if n in params}
    missing = [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) not in given]
    if unknown or wrong or missing:
        what = (f"unknown tensor {unknown[0]}" if unknown else
                f"{wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, expected {tuple(params[wrong[0]].shape)}"
                if wrong else f"no tensor for {missing[0]}")
        raise ModelLoadError(f"{folder}: the checkpoint does not match its config ({what})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
