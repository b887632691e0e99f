"""The refit inside a run: `search_refit` reaches the host's fitness through the real preparation,
a parallel worker rebuilt from its WorkerSpec computes the same refitted NLLs from the host's
calibration cache, `check_on_host` accepts them (and a host without the refit would not), and a
whole (tiny) search with the refit runs through the graph."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autoprune.agent.archive import SEED_SOURCES, WANDA_ID
from autoprune.agent.config import RunConfig
from autoprune.agent.executors import (CandidateRunner, EvaluationTask, EvaluationWorker, WorkerSpec,
                                       check_on_host)
from autoprune.agent.fitness import FitnessService
from autoprune.agent.setup import CALIBRATION_DIR, prepare
from autoprune.pruning.calibration import collect_activation_stats

from agent_support import ScriptedLLM, default_replies, random_windows, tiny_services


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory, tiny_llama_dir, wikitext_dir):
    run_dir = tmp_path_factory.mktemp("refit-run")
    config = RunConfig(model=str(tiny_llama_dir), data=str(wikitext_dir), seqlen=32, calibration_samples=2,
                       fitness_levels=[2, 3], sandbox="process", search_refit="obs")
    config.save(run_dir)
    return config, run_dir, prepare(config, run_dir)


def test_a_worker_computes_the_hosts_refitted_fitness_and_the_host_checks_it(prepared_run):
    config, run_dir, host = prepared_run
    assert host.fitness.refit == "obs" and "refitted (obs" in host.fitness.describe()
    assert any((run_dir / CALIBRATION_DIR).glob("*.safetensors"))       # what the worker reads
    spec = WorkerSpec.from_config(config, host.bundle.folder, host.fitness.levels)
    assert spec.search_refit == "obs" and spec.run_dir == str(run_dir.resolve())
    worker = EvaluationWorker.from_spec(spec)
    assert worker.fitness.refit == "obs" and worker.fitness.model is not host.loaded.model
    task = EvaluationTask(WANDA_ID, SEED_SOURCES[WANDA_ID], level=1)
    result = worker.evaluate(task)
    assert result.status == "ok", result.message
    request = CandidateRunner(host.bundle, config.sparsity_pattern, config.sparsity, "process").request()
    checked = check_on_host(result, task.source, host.bundle, request, host.fitness, level=1, spot_checks=3)
    assert checked.status == "ok", checked.message
    assert checked.nlls == pytest.approx(result.nlls, rel=1e-5)
    # the same masks measured by the host on its own, and the same masks without the refit
    own = host.fitness.evaluate("host-own", lambda: checked.masks, 1)
    assert own == pytest.approx(result.nlls, rel=1e-5)
    plain = FitnessService(host.loaded.model, host.fitness.windows, host.fitness.levels)
    assert plain.evaluate("plain", lambda: checked.masks, 1) != pytest.approx(own, rel=1e-4)
    refused = check_on_host(result, task.source, host.bundle, request, plain, level=1, spot_checks=3)
    assert refused.status == "invalid-output" and "claimed" in refused.message


def test_a_search_with_the_refit_runs_through_the_graph(tmp_path):
    from transformers import LlamaForCausalLM

    from autoprune.agent.archive import write_seeds
    from autoprune.agent.graph import build_graph
    from autoprune.agent.state import initial_state
    from conftest import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    services = tiny_services(model, tmp_path, ScriptedLLM(default_replies()), budget=1, search_refit="obs",
                             final_allocations=["uniform"], final_baselines=[], reconstruct="none")
    stats = collect_activation_stats(model, random_windows(4, seed=2), with_gram=True)
    fitness = FitnessService(model, random_windows(4, seed=3), services.config.fitness_levels,
                             refit=services.config.search_refit, stats=stats)
    services = dataclasses.replace(services, fitness=fitness)
    services.finale.fitness = fitness
    seed_ids, records = write_seeds(services.run_dir)
    state = build_graph(services).invoke(initial_state("r", seed_ids, records), {"recursion_limit": 500})
    wanda = state["candidates"][WANDA_ID]
    assert wanda["fitness"] is not None and state["budget_used"] == 1
    # the run's NLLs are the refitted model's: recomputed here from the candidate's stored masks
    from autoprune.agent.mask_files import load_masks

    level = max(int(k) for k in wanda["nll"])
    fresh = FitnessService(model, random_windows(4, seed=3), services.config.fitness_levels, refit="obs",
                           stats=stats)
    expected = fresh.evaluate("again", lambda: load_masks(tmp_path / wanda["masks_path"]), level)
    assert wanda["nll"][str(level)] == pytest.approx(expected, rel=1e-5)
    from autoprune.runlog.trace_file import read_trace

    events = [e for e in read_trace(tmp_path).events if e["type"] == "fitness"]
    assert events and all(e["refit"] == "obs" and e["refit_s"] >= 0 for e in events)
