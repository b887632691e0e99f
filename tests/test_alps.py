"""ALPS-class layer pruner: ADMM masks with the exact pattern counts, a layer error no worse than
SparseGPT's on the same layer, and `prune --method alps` through THE layer loop and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from autoprune.adapters import linear_weight
from autoprune.pruning.alps import ALPSPruner, alps_prune
from autoprune.pruning.calibration import collect_activation_stats, target_linears
from autoprune.pruning.loop import prune_model
from autoprune.pruning.masks import SparsityPattern, verify_mask
from autoprune.pruning.reconstruct import layer_error
from autoprune.pruning.sparsegpt import sparsegpt_prune
from tests.test_pruning_sparsegpt import correlated_layer


@pytest.mark.parametrize("sparsity,pattern", [(0.5, "unstructured"), (0.7, "unstructured"), (0.5, "2:4")])
def test_alps_masks_are_exact_and_beat_sparsegpt_on_the_layer(sparsity, pattern):
    W, X, stats = correlated_layer()
    pattern = SparsityPattern.parse(pattern)
    mask, W_new, info = alps_prune(W, stats.gram, sparsity, pattern)
    verify_mask(mask, tuple(W.shape), sparsity, group="layer", pattern=pattern)
    assert bool((W_new[~mask] == 0).all()) and info["admm_iterations"] >= 3
    _, W_sgpt = sparsegpt_prune(W, stats.gram, sparsity, pattern)
    assert layer_error(W, W_new, stats.gram) <= layer_error(W, W_sgpt, stats.gram)


def test_alps_layer_error_is_at_most_sparsegpts_on_a_tiny_llama(tiny_llama, tiny_windows):
    stats = collect_activation_stats(tiny_llama, tiny_windows, with_gram=True, progress=False)
    for name, (index, module) in target_linears(tiny_llama).items():
        if index:
            continue          # block 0 sees the same inputs for both methods
        W = linear_weight(module).detach().float()
        _, W_alps, _ = alps_prune(W, stats[name].gram, 0.6)
        _, W_sgpt = sparsegpt_prune(W, stats[name].gram, 0.6)
        assert layer_error(W, W_alps, stats[name].gram) <= layer_error(W, W_sgpt, stats[name].gram) * 1.001, name


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_alps_through_the_layer_loop(tiny_llama, tiny_windows, pattern):
    result = prune_model(tiny_llama, tiny_windows, method=ALPSPruner(), sparsity=0.5, pattern=pattern,
                         progress=False)
    assert result.method == "alps" and result.overall_sparsity == pytest.approx(0.5)
    for name, (_, module) in target_linears(tiny_llama).items():
        mask = result.masks[name]
        verify_mask(mask, tuple(mask.shape), 0.5, group="layer", pattern=SparsityPattern.parse(pattern))
        assert bool((linear_weight(module)[~mask] == 0).all())


def test_cli_prune_method_alps(tiny_llama_dir, wikitext_dir):
    command = [sys.executable, "-c", "from autoprune.cli import main; main()", "prune", "--method", "alps",
               "--sparsity", "0.7", "--model", str(tiny_llama_dir), "--data", str(wikitext_dir),
               "--nsamples", "4", "--seqlen", "64", "--eval-windows", "2", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["method"] == "alps" and result["overall_sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert torch.isfinite(torch.tensor(result["perplexity"]["pruned"]))
