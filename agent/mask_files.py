"""Verified masks on disk: one safetensors file per candidate, bit-packed.

Masks never enter the checkpointed state (they are large); the state holds the
file's path. Packing uses the same format as the sandbox transport.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

from autoprune.pruning.masks import pack_mask, unpack_mask


def save_masks(path: Path, masks: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.frombuffer(pack_mask(mask.cpu()), dtype=np.uint8).copy() for name, mask in masks.items()}
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(arrays, str(tmp), metadata={"shapes": json.dumps(shapes)})
    tmp.replace(path)   # atomic: a kill never leaves a half-written mask file behind
    return path


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="numpy") as fh:
        shapes = json.loads(fh.metadata()["shapes"])
    arrays = load_file(str(path))
    return {name: unpack_mask(arrays[name].tobytes(), tuple(shapes[name])) for name in shapes}


def load_packed(path: Path) -> dict[str, np.ndarray]:
    """The bit-packed masks as stored (uint8 per 8 weights), without unpacking."""
    return load_file(str(path))


def differing_fraction(packed: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> float:
    """Fraction of weights whose keep/prune decision differs between two packed mask sets."""
    if set(packed) != set(other):
        return 1.0
    differ = sum(int(np.bitwise_count(packed[n] ^ other[n]).sum()) for n in packed)
    return differ / max(8 * sum(a.size for a in packed.values()), 1)
