"""`run_prune_job` / `run_eval_job` on a tiny saved model with real WikiText-2 text."""

from __future__ import annotations

import math

import pytest

from autoprune.pruning.config import EvalConfig, PruneConfig, make_config
from autoprune.jobs import run_eval_job, run_prune_job

SMALL = dict(nsamples=2, seqlen=64, eval_windows=2, progress=False)


def test_prune_job_with_owl_exports_a_loadable_model(tiny_llama_dir, wikitext_dir, tmp_path):
    out = tmp_path / "out"
    result = run_prune_job(make_config(PruneConfig, method="ria", sparsity=0.6, allocation="owl",
                                       model=str(tiny_llama_dir), data=str(wikitext_dir), out=str(out),
                                       cache_dir=str(tmp_path / "cache"), **SMALL))
    assert result["allocation"] == "owl" and len(result["block_sparsity"]) == 2
    assert math.isfinite(result["perplexity"]["pruned"])
    assert (out / "summary.json").is_file() and (out / "model.safetensors").is_file()
    evaluated = run_eval_job(make_config(EvalConfig, model=str(out), data=str(wikitext_dir), seqlen=64, windows=2,
                                         progress=False))
    assert evaluated["perplexity"] == pytest.approx(result["perplexity"]["pruned"], rel=1e-4)
    assert evaluated["pruning_summary"]["method"] == "ria"


def test_candidate_file_runs_in_the_sandbox_and_its_masks_are_applied(tiny_llama_dir, wikitext_dir, tmp_path):
    pytest.importorskip("autoprune.sandbox.api")
    candidate = tmp_path / "cand.py"
    candidate.write_text("GROUP = 'row'\n\ndef score(W, X):\n    return W.abs() * X.max_abs\n")
    result = run_prune_job(make_config(PruneConfig, method=str(candidate), sparsity=0.5, model=str(tiny_llama_dir),
                                       data=str(wikitext_dir), sandbox="process", eval_dense=False,
                                       cache_dir=str(tmp_path / "cache"), **SMALL))
    assert result["method"] == "cand"
    assert all(s == pytest.approx(0.5) for s in result["layer_sparsity"].values())
