"""Shared fixtures' helpers for the sandbox tests (imported by tests/test_sandbox_*.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autoprune.errors import SandboxError
from autoprune.pruning.masks import scores_to_mask
from autoprune.sandbox.bundle import ScoringBundle

WANDA = "import torch\n\ndef score(W, X):\n    return W.abs() * X.norm\n"


def require_docker_image() -> None:
    """Skip without an engine; build the image when it is missing (cached, idempotent)."""
    from autoprune.sandbox.build import build_image
    from autoprune.sandbox.docker_backend import docker_client

    try:
        docker_client()
    except SandboxError as exc:
        pytest.skip(str(exc))
    build_image(step=lambda message: None)


def wanda_masks(bundle: ScoringBundle, sparsity: float) -> dict[str, torch.Tensor]:
    """The built-in Wanda (|W| · ‖X‖, row groups) straight from the bundle files."""
    weights = load_file(str(Path(bundle.folder) / "weights.safetensors"))
    stats = load_file(str(Path(bundle.folder) / "stats.safetensors"))
    return {name: scores_to_mask(weights[name].abs() * stats[f"{name}.norm"], sparsity, group="row")
            for name in bundle.names}


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        digest.update(str(path).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()
