"""End to end on the embedded model: prune (Wanda 50%) → export → reload with plain transformers."""

from __future__ import annotations

import json
import math

import pytest


@pytest.mark.slow
def test_prune_export_reload_gives_the_same_perplexity(wikitext_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoprune.data import load_corpus
    from autoprune import data as data_module
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.pruning.config import EvalConfig, PruneConfig, make_config
    from autoprune.jobs import run_eval_job, run_prune_job

    out = tmp_path / "pruned"
    config = make_config(PruneConfig, method="wanda", sparsity=0.5, data=str(wikitext_dir), nsamples=4,
                         seqlen=256, eval_windows=3, out=str(out), progress=False, cache_dir=str(tmp_path / "c"))
    result = run_prune_job(config)
    ppl = result["perplexity"]
    assert math.isfinite(ppl["pruned"]) and ppl["pruned"] > ppl["dense"]
    assert result["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)

    model = AutoModelForCausalLM.from_pretrained(out).eval()      # plain transformers, nothing of ours
    tokenizer = AutoTokenizer.from_pretrained(out)
    windows = data_module.test_windows(tokenizer, load_corpus(str(wikitext_dir)), nwindows=3, seqlen=256)
    assert perplexity(model, windows) == pytest.approx(ppl["pruned"], rel=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "wanda" and len(summary["layer_sparsity"]) == 30 * 7

    evaluated = run_eval_job(make_config(EvalConfig, model=str(out), data=str(wikitext_dir), seqlen=256,
                                         windows=3, progress=False))
    assert evaluated["perplexity"] == pytest.approx(ppl["pruned"], rel=1e-4)
    assert evaluated["sparsity"] == pytest.approx(0.5, abs=1e-3)
