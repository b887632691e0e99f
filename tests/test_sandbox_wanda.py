"""A Wanda-equivalent candidate through the Docker sandbox gives exactly the built-in Wanda's masks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from autoprune.pruning.masks import scores_to_mask
from autoprune.pruning.metrics import get_metric
from autoprune.sandbox import (
    SandboxLimits, ScoringRequest, run_candidate, write_scoring_bundle,
)
from autoprune.sandbox.tiny import synthetic_stats, tiny_llama
from autoprune.sandbox.worker import layer_stats
from sandbox_support import WANDA, require_docker_image

pytestmark = pytest.mark.docker


def builtin_wanda_masks(bundle, sparsity: float) -> dict[str, torch.Tensor]:
    metric = get_metric("wanda")
    masks = {}
    with safe_open(str(bundle.folder / "weights.safetensors"), "pt") as wf, \
            safe_open(str(bundle.folder / "stats.safetensors"), "pt") as sf:
        for spec in bundle.layers:
            stats = layer_stats(sf, {**spec.__dict__})
            scores = metric.score(wf.get_tensor(spec.name), stats)
            masks[spec.name] = scores_to_mask(scores, sparsity, group=metric.group)
    return masks


def assert_same_as_builtin(bundle, sparsity: float, limits: SandboxLimits) -> None:
    request = ScoringRequest(sparsity={name: sparsity for name in bundle.names})
    verdict = run_candidate(WANDA, bundle, request, limits=limits)
    assert verdict.status == "ok", verdict.message
    expected = builtin_wanda_masks(bundle, sparsity)
    assert set(verdict.masks) == set(expected)
    for name, mask in expected.items():
        assert torch.equal(verdict.masks[name], mask), name


def test_tiny_model(tmp_path):
    require_docker_image()
    model = tiny_llama(seed=3)
    bundle = write_scoring_bundle(model, synthetic_stats(model, seed=3), tmp_path)
    assert_same_as_builtin(bundle, 0.6, SandboxLimits(timeout_s=120, memory_bytes=1 << 30))


@pytest.mark.slow
def test_embedded_model(tmp_path):
    require_docker_image()
    from autoprune.data import calibration_windows, load_corpus
    from autoprune.models import load_model
    from autoprune.pruning.calibration import collect_activation_stats

    data = os.environ.get("AUTOPRUNE_TEST_DATA",
                          str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2"))
    loaded = load_model()
    corpus = load_corpus(data, model=loaded.model, tokenizer=loaded.tokenizer, seed=0)
    windows = calibration_windows(loaded.tokenizer, corpus, nsamples=2, seqlen=128, seed=0)
    stats = collect_activation_stats(loaded.model, windows)
    bundle = write_scoring_bundle(loaded.model, stats, tmp_path)
    assert len(bundle.names) == 30 * 7
    assert_same_as_builtin(bundle, 0.5, SandboxLimits(timeout_s=600, memory_bytes=4 << 30, cpus=2))
