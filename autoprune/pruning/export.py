"""Save a pruned model so plain transformers loads it, plus a summary.json.

The zeros are stored as ordinary dense safetensors (what every runtime reads);
`summary.json` records how they were chosen: method, allocation, pattern,
per-layer sparsity, protocol and perplexities.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from autoprune.errors import BadInputError

SUMMARY = "summary.json"


def export_pruned_model(model: nn.Module, tokenizer, out_dir: Path | str, summary: dict) -> Path:
    """Write `model` (safetensors), its tokenizer and `summary.json` into `out_dir`."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # Tied embeddings are shared tensors; save_pretrained handles them (safe_serialization).
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    return out


def read_summary(model_dir: Path | str) -> dict | None:
    path = Path(model_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None
