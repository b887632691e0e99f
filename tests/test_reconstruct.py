"""Reconstruction plug-ins for a fixed mask: the exact refit is the per-row least-squares optimum,
never worse than OBS or no refit, keeps the mask, and runs in the layer loop and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from autoprune.errors import BadInputError
from autoprune.pruning.calibration import target_linears
from autoprune.pruning.loop import prune_model
from autoprune.pruning.masks import SparsityPattern, scores_to_mask
from autoprune.pruning.metrics import get_metric
from autoprune.pruning.choices import RECONSTRUCTION_NAMES, reconstruction_name
from autoprune.pruning.reconstruct import RECONSTRUCTIONS, damped_gram, exact_refit, get_reconstruction, layer_error
from autoprune.pruning.sparsegpt import DAMP, reconstruct as obs_reconstruct
from autoprune.adapters import linear_weight
from tests.test_pruning_sparsegpt import correlated_layer


def closed_form(W: torch.Tensor, mask: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Row by row: w'_S = H_SS⁻¹ (H wᵀ)_S, i.e. min over w' on S of (w − w') H (w − w')ᵀ."""
    out = torch.zeros_like(W, dtype=torch.float64)
    for i in range(W.shape[0]):
        S = mask[i].nonzero().squeeze(1)
        rhs = (H @ W[i].to(torch.float64))[S]
        out[i, S] = torch.linalg.solve(H[S][:, S], rhs)
    return out


def wanda_mask(W, stats, sparsity=0.6, pattern=SparsityPattern()):
    return scores_to_mask(get_metric("wanda").score(W, stats), sparsity, pattern=pattern)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_exact_refit_equals_the_closed_form_least_squares_solve(pattern):
    W, X, stats = correlated_layer(out_features=12, in_features=40, tokens=512)
    mask = wanda_mask(W, stats, pattern=SparsityPattern.parse(pattern))
    refit = exact_refit(W, mask, stats.gram, rtol=1e-12, max_iter=400, dtype=torch.float64)
    expected = closed_form(W, mask, damped_gram(stats.gram, DAMP))
    assert torch.allclose(refit.to(torch.float64), expected, rtol=1e-4, atol=1e-5)
    # undamped: the plain least-squares solution on the kept columns, from torch.linalg.lstsq
    # (XᵀX exactly here: undamped, the solve amplifies calibration's float32 rounding beyond 1e-3)
    exact_gram = X.double().T @ X.double()
    plain = exact_refit(W, mask, exact_gram, damp=1e-12, rtol=1e-12, max_iter=400, dtype=torch.float64)
    for i in (0, 5, 11):
        S = mask[i].nonzero().squeeze(1)
        lstsq = torch.linalg.lstsq(X[:, S].double(), (X @ W[i]).double().unsqueeze(1)).solution.squeeze(1)
        assert torch.allclose(plain[i, S].double(), lstsq, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("metric,sparsity", [("wanda", 0.5), ("magnitude", 0.7)])
def test_exact_refit_never_raises_the_layer_error_and_keeps_the_mask(metric, sparsity):
    W, X, stats = correlated_layer()
    m = get_metric(metric)
    mask = scores_to_mask(m.score(W, stats), sparsity, group=m.group)
    none = W * mask
    obs = obs_reconstruct(W, mask, stats.gram)
    exact = get_reconstruction("exact")(W, mask, stats, None)
    assert bool((exact[~mask] == 0).all())
    for damp in (DAMP, 0.0):     # the damped objective it minimises, and ‖WX − W'X‖² itself
        errors = [layer_error(W, w, stats.gram, damp) for w in (none, obs, exact)]
        assert errors[2] <= errors[1] <= errors[0], errors
    assert layer_error(W, exact, stats.gram) < 0.9 * layer_error(W, obs, stats.gram)


def test_reconstruction_names_and_errors():
    assert tuple(RECONSTRUCTIONS) == RECONSTRUCTION_NAMES     # the names flags are checked against, all implemented
    assert reconstruction_name(True) == "obs" and reconstruction_name(False) == "none"
    with pytest.raises(BadInputError, match="unknown reconstruction"):
        reconstruction_name("magic")
    W, X, stats = correlated_layer(out_features=4, in_features=20, tokens=64)
    stats.gram = None
    with pytest.raises(BadInputError, match="needs XᵀX"):
        get_reconstruction("exact")(W, wanda_mask(W, stats), stats, None)


def test_exact_reconstruction_in_the_sequential_layer_loop(tiny_llama, tiny_windows):
    import copy

    from autoprune.evaluators.perplexity import perplexity

    obs = copy.deepcopy(tiny_llama)
    prune_model(obs, tiny_windows, method=get_metric("wanda"), sparsity=0.7, reconstruct="obs", progress=False)
    result = prune_model(tiny_llama, tiny_windows, method=get_metric("wanda"), sparsity=0.7, reconstruct="exact",
                         progress=False)
    assert result.reconstruct == "exact" and result.summary()["reconstruct"] == "exact"
    for name, (_, module) in target_linears(tiny_llama).items():
        assert bool((linear_weight(module)[~result.masks[name]] == 0).all())
    assert perplexity(tiny_llama, tiny_windows) < perplexity(obs, tiny_windows) * 1.02


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from autoprune.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_wanda_with_the_exact_refit(tiny_llama_dir, wikitext_dir):
    done = run_cli("prune", "--method", "wanda", "--sparsity", "0.6", "--reconstruct", "exact", "--model",
                   str(tiny_llama_dir), "--data", str(wikitext_dir), "--nsamples", "4", "--seqlen", "64",
                   "--eval-windows", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["reconstruct"] == "exact" and result["overall_sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert result["perplexity"]["pruned"] > 0
    bad = run_cli("prune", "--method", "wanda", "--sparsity", "0.5", "--reconstruct", "magic")
    assert bad.returncode == 2 and "unknown reconstruction" in bad.stderr and "Traceback" not in bad.stderr


def test_preconditioned_and_plain_cg_reach_the_closed_form_solution():
    from autoprune.pruning.reconstruct import masked_cg, unit_hessian

    W, X, stats = correlated_layer(out_features=24, in_features=80, tokens=1024)
    mask = wanda_mask(W, stats, 0.5)
    mask[3] = True                                   # rows with other supports stop at other iterations
    mask[5, :70] = False
    Hn, s, inverse = unit_hessian(stats.gram, dtype=torch.float64)
    rhs, start = (W.double() * s) @ Hn, W.double() * s * mask
    expected = closed_form(W, mask, damped_gram(stats.gram, DAMP))
    for inv in (None, inverse):
        refit = masked_cg(Hn, rhs, mask, start, rtol=1e-12, max_iter=1000, inverse=inv) / s
        assert torch.allclose(refit, expected, rtol=1e-6, atol=1e-8)
        assert bool((refit[~mask] == 0).all())
