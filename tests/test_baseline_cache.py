"""The cross-run cache of dense and baseline test perplexities (evaluators/baseline_cache.py).

Real tiny Llama, the real layer loop and perplexity; evaluations are counted by a forward hook on the
model (a window of the test set going through it), never by replacing what computes them.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from autoprune.data import WindowSet
from autoprune.evaluators.baseline_cache import (ENTRY_MAX_BYTES, BaselineCache, baseline_key, dense_key,
                                                 model_digest, model_fields)
from autoprune.evaluators.baselines import BaselineEvaluator, BaselineSpec

from forward_counter_support import ForwardCounter
from rates_support import small_wikitext  # noqa: F401 - a fixture: the jobs tokenize their data each time


def windows(n: int, seed: int, seqlen: int = 32) -> WindowSet:
    generator = torch.Generator().manual_seed(seed)
    return WindowSet(torch.randint(0, 256, (n, seqlen), generator=generator), f"{n}x{seqlen} random tokens")


@pytest.fixture
def setting(tiny_llama, tmp_path):
    test, calibration = windows(3, seed=4), windows(4, seed=2)
    return tiny_llama, calibration, test, tmp_path / "baselines"


def test_second_evaluation_is_served_from_the_cache(setting):
    model, calibration, test, root = setting
    spec = BaselineSpec("sparsegpt", 0.5)
    dense_weights = {k: v.clone() for k, v in model.state_dict().items()}
    first = BaselineEvaluator(model, calibration, test, cache=BaselineCache(root))
    counter = ForwardCounter(model, test)
    dense, pruned = first.dense(), first.baseline(spec)
    assert counter.count == 2 * len(test) and first.cache.computed == 2 and first.cache.hits == 0
    assert not dense.cached and not pruned.cached and pruned.perplexity != dense.perplexity > 1
    assert all(torch.equal(v, dense_weights[k]) for k, v in model.state_dict().items())   # dense weights back

    second = BaselineEvaluator(model, calibration, test, cache=BaselineCache(root))      # another run
    again_dense, again_pruned = second.dense(), second.baseline(spec)
    assert counter.count == 2 * len(test)                   # nothing evaluated, nothing pruned
    assert second.cache.hits == 2 and second.cache.computed == 0
    assert (again_dense.perplexity, again_pruned.perplexity) == (dense.perplexity, pruned.perplexity)
    assert again_dense.cached and again_pruned.cached


def test_the_key_follows_weights_windows_and_settings_not_the_commit(setting):
    model, calibration, test, _ = setting
    info = model_fields(model)
    base = baseline_key(info, test, calibration, method="wanda", sparsity=0.5, pattern="unstructured")
    assert base == baseline_key(model_fields(model), test, calibration, method="wanda", sparsity=0.5,
                                pattern="unstructured")                       # deterministic digests
    variants = [baseline_key(info, windows(3, seed=5), calibration, method="wanda", sparsity=0.5, pattern="unstructured"),
                baseline_key(info, test, windows(4, seed=6), method="wanda", sparsity=0.5, pattern="unstructured"),
                baseline_key(info, test, calibration, method="wanda", sparsity=0.6, pattern="unstructured"),
                baseline_key(info, test, calibration, method="wanda", sparsity=0.5, pattern="2:4"),
                baseline_key(info, test, calibration, method="wanda", sparsity=0.5, pattern="unstructured",
                             allocation="owl", allocation_hyper={"lam": 0.08}),
                baseline_key(info, test, calibration, method="wanda", sparsity=0.5, pattern="unstructured",
                             reconstruct="exact"),
                dense_key(info, test)]
    assert len({k.digest() for k in [base, *variants]}) == len(variants) + 1
    before = model_digest(model)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 7] += 1e-3               # one weight of one layer
    assert model_digest(model) != before
    assert "commit" not in base.model_dump()


@pytest.mark.parametrize("damage", ["garbage", "wrong-type", "other-key", "oversized", "extra-field"])
def test_a_corrupt_entry_is_recomputed_with_a_warning_never_a_crash(setting, damage, caplog):
    model, calibration, test, root = setting
    cache = BaselineCache(root)
    evaluator = BaselineEvaluator(model, calibration, test, cache=cache)
    good = evaluator.dense().perplexity
    path = cache.path(dense_key(evaluator.model_info, test))
    entry = json.loads(path.read_text())
    if damage == "garbage":
        path.write_bytes(b"\x00\xff{not json")
    elif damage == "wrong-type":
        path.write_text(json.dumps({**entry, "perplexity": "12.5"}))
    elif damage == "other-key":          # a valid entry of another key filed under this one's name
        path.write_text(json.dumps({**entry, "key": {**entry["key"], "test_windows": 99}, "perplexity": 1.5}))
    elif damage == "oversized":
        path.write_text(json.dumps({**entry, "notes": {"x": "y" * ENTRY_MAX_BYTES}}))
    else:
        path.write_text(json.dumps({**entry, "perplexity": 1.5, "trusted": True}))
    counter = ForwardCounter(model, test)
    fresh = BaselineEvaluator(model, calibration, test, cache=BaselineCache(root))
    with caplog.at_level(logging.WARNING, logger="autoprune.evaluators.baseline_cache"):
        recomputed = fresh.dense()
    assert not recomputed.cached and counter.count == len(test) and fresh.cache.computed == 1
    assert recomputed.perplexity == pytest.approx(good, rel=1e-6)
    assert any("not a valid entry" in r.getMessage() for r in caplog.records)
    assert BaselineCache(root).get(dense_key(fresh.model_info, test)).perplexity == recomputed.perplexity  # repaired


def test_writes_are_atomic_and_an_unusable_value_is_not_stored(setting):
    model, calibration, test, root = setting
    cache = BaselineCache(root)
    key = dense_key(model_fields(model), test)
    cache.put(key, math.inf, 1.0)
    assert cache.get(key) is None
    cache.put(key, 12.5, 1.0, notes={"commit": "abc"})
    assert [p.name for p in root.iterdir()] == [cache.path(key).name]         # no temporary file left behind
    assert cache.get(key).perplexity == 12.5 and cache.get(key).notes == {"commit": "abc"}


def test_the_cache_can_be_turned_off(setting, monkeypatch):
    model, calibration, test, root = setting
    monkeypatch.setenv("AUTOPRUNE_BASELINE_CACHE", "off")
    cache = BaselineCache(root)
    evaluator = BaselineEvaluator(model, calibration, test, cache=cache)
    evaluator.dense()
    evaluator.dense()
    assert cache.computed == 2 and not root.exists()


def test_the_default_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_BASELINE_CACHE_DIR", str(tmp_path / "here"))
    assert BaselineCache().root == tmp_path / "here"
    monkeypatch.delenv("AUTOPRUNE_BASELINE_CACHE_DIR")
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "root"))
    assert BaselineCache().root == tmp_path / "root" / "baselines"


def test_prune_job_serves_dense_and_a_baseline_from_the_cache_the_second_time(tiny_llama_dir, small_wikitext, tmp_path,
                                                                               monkeypatch):  # noqa: F811
    from autoprune.jobs import run_prune_job
    from autoprune.pruning.config import PruneConfig, make_config

    monkeypatch.setenv("AUTOPRUNE_BASELINE_CACHE_DIR", str(tmp_path / "baselines"))
    config = make_config(PruneConfig, method="wanda", sparsity=0.5, model=str(tiny_llama_dir), data=str(small_wikitext),
                         nsamples=2, seqlen=64, eval_windows=2, progress=False, cache_dir=str(tmp_path / "stats"))
    first, second = run_prune_job(config), run_prune_job(config)
    assert first["perplexity_cached"] == {"dense": False, "pruned": False}
    assert second["perplexity_cached"] == {"dense": True, "pruned": True}
    assert second["perplexity"] == first["perplexity"]
    other = run_prune_job(config.model_copy(update={"sparsity": 0.6}))
    assert other["perplexity_cached"] == {"dense": True, "pruned": False}
