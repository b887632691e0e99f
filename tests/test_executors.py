"""Parallel evaluation: a local pool and a real Ray cluster give exactly the serial results."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from autoprune.agent.executors import EvaluationTask, EvaluationWorker, LocalPoolExecutor, WorkerSpec, make_executor
from autoprune.data import calibration_windows, load_corpus
from autoprune.errors import AutopruneError, BadInputError
from autoprune.pruning.calibration import collect_activation_stats
from autoprune.sandbox.bundle import write_scoring_bundle

CANDIDATES = {
    "wanda": "def score(W, X):\n    return W.abs() * X.norm\n",
    "magnitude": "def score(W, X):\n    return W.abs()\n",
    "rms": "import torch\ndef score(W, X):\n    return W.abs() * torch.sqrt(X.sq_mean + 1e-8)\n",
    "hostile": "import os\ndef score(W, X):\n    return W\n",
    "nan": "def score(W, X):\n    return W * float('nan')\n",
}


@pytest.fixture(scope="module")
def small_run(tiny_llama_dir, wikitext_dir):
    """The shared tiny Llama (embedded tokenizer) plus its scoring bundle."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    corpus = load_corpus(str(wikitext_dir))
    stats = collect_activation_stats(model, calibration_windows(tokenizer, corpus, nsamples=2, seqlen=64, seed=0))
    bundle = write_scoring_bundle(model, stats, tiny_llama_dir.parent / "executor-bundle")
    return WorkerSpec(bundle_dir=str(bundle.folder), model=str(tiny_llama_dir), data=str(wikitext_dir),
                      seqlen=64, levels=(2, 4), sparsity=0.5, backend="process")


def tasks() -> list[EvaluationTask]:
    return [EvaluationTask(cid, src, level=1) for cid, src in CANDIDATES.items()]


def comparable(results):
    return [(r.candidate_id, r.status, r.nlls, r.packed_masks) for r in results]


@pytest.fixture(scope="module")
def serial_results(small_run):
    executor = make_executor("serial", small_run)
    try:
        return executor.map(tasks())
    finally:
        executor.close()


def test_serial_verdicts_are_right(serial_results):
    status = {r.candidate_id: r.status for r in serial_results}
    assert status == {"wanda": "ok", "magnitude": "ok", "rms": "ok", "hostile": "rejected-static",
                      "nan": "invalid-output"}
    wanda = next(r for r in serial_results if r.candidate_id == "wanda")
    assert len(wanda.nlls) == 4 and all(v > 0 for v in wanda.nlls)


def test_local_pool_matches_serial(small_run, serial_results):
    executor = LocalPoolExecutor(small_run, workers=2)
    try:
        results = executor.map(tasks())
    finally:
        executor.close()
    assert comparable(results) == comparable(serial_results)
    assert len({r.worker for r in results}) >= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_cluster_on_loopback_matches_serial(small_run, serial_results):
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip("ray is not installed (pip install 'autoprune-agent[ray]')")
    port = free_port()
    tmp_path = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    start = [str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp_path}"]
    subprocess.run(start, check=True, capture_output=True, timeout=180)
    try:
        executor = make_executor("ray", small_run, workers=2, ray_address=f"127.0.0.1:{port}")
        try:
            results = executor.map(tasks())
        finally:
            executor.close()
        assert comparable(results) == comparable(serial_results)

        # The agent itself on the cluster: `run --executor ray --ray-address ... --workers 2`.
        run_dir = tmp_path / "agent-run"
        run_dir.mkdir()
        state, model, windows = graph_run_on(
            lambda spec: make_executor("ray", spec, workers=2, ray_address=f"127.0.0.1:{port}"), run_dir,
            small_run.model, small_run.data, executor_kind="ray", ray_address=f"127.0.0.1:{port}")
        check_batched_run(state, model, windows, run_dir)
    finally:
        import ray

        ray.shutdown()
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_bad_executor_settings_are_clear_errors(small_run):
    with pytest.raises(BadInputError, match="unknown executor"):
        make_executor("slurm", small_run)
    with pytest.raises(BadInputError, match="--ray-address"):
        make_executor("ray", small_run, workers=2)


def graph_run_on(make, run_dir, tiny_llama_dir, wikitext_dir, *, executor_kind="local", ray_address=None):
    """A tiny agent run (scripted LLM, process sandbox) whose candidates go through `make(spec)`'s executor;
    returns (state, model, windows)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent_support import ScriptedLLM, default_replies, tiny_services
    from autoprune.agent.archive import write_seeds
    from autoprune.agent.fitness import FitnessService
    from autoprune.agent.graph import build_graph
    from autoprune.agent.state import initial_state
    from autoprune.data import fitness_windows

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    windows = fitness_windows(AutoTokenizer.from_pretrained(tiny_llama_dir), load_corpus(str(wikitext_dir)),
                              nwindows=4, seqlen=32)
    expressions = ["W.abs() * X.max_abs", "W.abs().sqrt() * X.norm", "W.abs() * X.var.sqrt()",
                   "torch.log1p(W.abs()) * X.max_abs"]
    llm = ScriptedLLM({**default_replies(), "write_code": [f"```python\n{e}\n```" for e in expressions]})
    services = tiny_services(model, run_dir, llm, budget=4, executor=executor_kind, workers=2,
                             ray_address=ray_address)
    services.fitness = services.finale.fitness = FitnessService(model, windows, [2, 4])
    spec = WorkerSpec(bundle_dir=str(services.sandbox.bundle.folder), model=str(tiny_llama_dir),
                      data=str(wikitext_dir), seqlen=32, levels=(2, 4), sparsity=0.5, backend="process")
    services.executor = make(spec)
    try:
        seed_ids, records = write_seeds(run_dir)
        state = build_graph(services).invoke(initial_state("t", seed_ids, records), {"recursion_limit": 500})
    finally:
        services.executor.close()
    return state, model, windows


def check_batched_run(state, model, windows, run_dir) -> None:
    """Two candidates per hypothesis, verified and scored in one verify visit; worker NLLs == host NLLs."""
    from autoprune.agent.fitness import FitnessService
    from autoprune.agent.mask_files import load_masks
    from autoprune.runlog.trace_file import read_trace

    assert state["budget_used"] == 4 and sum(state["verdicts"].values()) == 7
    assert set(state["verdicts"]) <= {"ok", "duplicate"}              # near-twins on a random tiny model
    assert {"g001-a0", "g001-a1", "g002-a0", "g002-a1"} <= set(state["candidates"])
    events = read_trace(run_dir).events
    verify_visits = [e for e in events if e["type"] == "node_entered" and e["node"] == "verify"]
    assert len(verify_visits) == 4                # three seeds two at a time, then two batches of two
    host = FitnessService(model, windows, [2, 4])
    compared = 0
    for cid, rec in state["candidates"].items():
        if rec.get("masks_path"):
            path = run_dir / rec["masks_path"]
            assert host.evaluate(cid, lambda: load_masks(path), 0) == pytest.approx(rec["nll"]["0"], rel=1e-5)
            compared += 1
    assert compared >= 3 and state["final"]["test"]["uniform"] > 1


def test_agent_graph_writes_batches_and_evaluates_them_on_the_pool(tmp_path, tiny_llama_dir, wikitext_dir):
    """`--executor local --workers 2`: two candidates per hypothesis, verified and scored (level 0)
    by two pool workers; the NLLs equal the host's own evaluation of the same masks."""
    state, model, windows = graph_run_on(lambda spec: make_executor("local", spec, workers=2), tmp_path,
                                         tiny_llama_dir, wikitext_dir)
    check_batched_run(state, model, windows, tmp_path)


class LyingWorker(EvaluationWorker):
    """A real pool worker that forges what it returns: better fitness, or masks that keep everything."""

    def evaluate(self, task: EvaluationTask):
        from autoprune.pruning.masks import pack_mask

        result = super().evaluate(task)
        if task.candidate_id.startswith("forged-fitness") and result.nlls:
            result.nlls = [value * 0.9 for value in result.nlls]
        if task.candidate_id.startswith("forged-one-window") and result.nlls:
            result.nlls = [result.nlls[0] * 0.9, *result.nlls[1:]]
        if task.candidate_id.startswith("forged-masks"):
            result.packed_masks = {name: pack_mask(self._keep_all(name)) for name in result.packed_masks}
        return result

    def _keep_all(self, name: str):
        import torch

        return torch.ones(self.bundle.layer(name).shape, dtype=torch.bool)


class LyingPool(LocalPoolExecutor):
    worker_class = LyingWorker


def test_the_host_catches_a_worker_that_lies(small_run, tiny_llama_dir, wikitext_dir):
    """Forged fitness and forged masks from a real worker process end as invalid-output on the host;
    honest results pass with the host's NLLs."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoprune.agent.executors import CandidateRunner, check_on_host
    from autoprune.pruning.masks import SparsityPattern
    from autoprune.agent.fitness import FitnessService
    from autoprune.data import fitness_windows
    from autoprune.sandbox.bundle import ScoringBundle

    wanda = CANDIDATES["wanda"]
    tasks = [EvaluationTask(cid, wanda, level=0) for cid in
             ("honest", "forged-fitness", "forged-one-window", "forged-masks")]
    executor = LyingPool(small_run, workers=2)
    try:
        results = {r.candidate_id: r for r in executor.map(tasks)}
    finally:
        executor.close()
    assert all(r.status == "ok" for r in results.values())           # the worker says all is well
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    windows = fitness_windows(AutoTokenizer.from_pretrained(tiny_llama_dir), load_corpus(str(wikitext_dir)),
                              nwindows=max(small_run.levels), seqlen=small_run.seqlen)
    host = FitnessService(model, windows, list(small_run.levels))
    bundle = ScoringBundle.open(small_run.bundle_dir)
    request = CandidateRunner(bundle, SparsityPattern.parse(small_run.pattern), small_run.sparsity,
                              small_run.backend).request()

    def check(cid, **kwargs):
        return check_on_host(results[cid], wanda, bundle, request, host, level=0, **kwargs)

    honest = check("honest")
    assert honest.status == "ok" and honest.nlls == pytest.approx(results["honest"].nlls, rel=1e-5)
    forged = check("forged-fitness")
    assert forged.status == "invalid-output" and "NLL" in forged.message and forged.masks is None
    masks = check("forged-masks")
    assert masks.status == "invalid-output" and "expected exactly" in masks.message
    # A forgery of one window in n is caught when that window is drawn (here: every window is).
    one = check("forged-one-window", spot_checks=len(results["honest"].nlls))
    assert one.status == "invalid-output" and "window 0" in one.message
    caught = check("forged-one-window", rng=random.Random(1), spot_checks=1)         # draws window 0
    assert caught.status == "invalid-output" and "window 0" in caught.message
    missed = check("forged-one-window", rng=random.Random(0), spot_checks=1)         # draws window 1: the
    assert missed.status == "ok" and missed.nlls[0] < results["honest"].nlls[0]      # documented limit
    # A different source than the one the worker ran: the host's own gate decides.
    assert check_on_host(results["honest"], "import os\n", bundle, request, host).status == "rejected-static"


def test_the_worker_spec_is_built_from_the_runs_config(tmp_path):
    """Issue 17: one function turns the run's settings into a worker's, seed, data and device included
    (a 'self' corpus depends on --seed, fitness on the device), and the spec survives pickling."""
    import pickle

    import torch

    from autoprune.agent.config import RunConfig
    from autoprune.agent.executors import slot_specs

    config = RunConfig(model="some/model", data="self", seed=7, seqlen=64, sparsity=0.6, pattern="2:4",
                       sandbox="process", candidate_timeout_s=33, executor="local", workers=2)
    spec = WorkerSpec.from_config(config, tmp_path / "bundle", [2, 4])
    assert (spec.model, spec.data, spec.seed, spec.seqlen, spec.sparsity, spec.pattern, spec.backend) == (
        "some/model", "self", 7, 64, 0.6, "2:4", "process")
    assert spec.levels == (2, 4) and spec.bundle_dir == str((tmp_path / "bundle").resolve())
    assert spec.limits.timeout_s == 33 and spec.limits.gpus is None and spec.device == "cpu"
    assert pickle.loads(pickle.dumps(spec)) == spec
    on_gpus = WorkerSpec.from_config(config.model_copy(update={"gpus": "0,1"}), tmp_path / "bundle", [2, 4])
    assert on_gpus.device == ("cuda" if torch.cuda.is_available() else "cpu") and on_gpus.limits.gpus == "0,1"
    slots = slot_specs(replace(on_gpus, device="cuda"), 2, ["0", "1"])
    assert [s.model_device() for s in slots] == ["cuda:0", "cuda:1"] and {s.seed for s in slots} == {7}
    assert replace(spec, gpu="1").model_device() == "cpu"               # a CPU host keeps its workers on CPU


def test_the_default_executor_is_the_hosts_own_runner_and_fitness(tmp_path, tiny_llama):
    """Serial runs evaluate through `SerialExecutor.resident`: the same worker code as a pool's, on the
    host's runner and fitness service (whose NLLs it caches), with nothing to spot-check."""
    from agent_support import tiny_services
    from autoprune.agent.executors import SerialExecutor
    from autoprune.agent.fitness import FitnessService
    from autoprune.pruning.masks import unpack_mask

    services = tiny_services(tiny_llama, tmp_path, None)
    executor = SerialExecutor.resident(services.sandbox, services.fitness)
    assert executor.trusted and executor.workers == 1
    assert executor.worker.runner is services.sandbox and executor.worker.fitness is services.fitness
    (result,) = executor.map([EvaluationTask("wanda", CANDIDATES["wanda"], level=0)])
    bundle = services.sandbox.bundle
    masks = {name: unpack_mask(result.packed_masks[name], bundle.layer(name).shape) for name in bundle.names}
    fresh = FitnessService(tiny_llama, services.fitness.windows, services.fitness.levels)
    assert result.status == "ok" and result.nlls == pytest.approx(fresh.evaluate("w", lambda: masks, 0), rel=1e-6)


def test_a_serial_run_builds_its_resident_executor_once(tmp_path, tiny_llama):
    """The run's services build the evaluation pipeline over `SerialExecutor.resident` at its first use and
    keep it: every verify visit of the run sends to the same worker (and, with a depth, the same thread)."""
    from agent_support import tiny_services

    services = tiny_services(tiny_llama, tmp_path, None, pipeline_depth=1)
    pipeline = services.evaluation()
    assert services.evaluation() is pipeline and pipeline.trusted and pipeline.capacity == 1
    assert pipeline.executor.worker.runner is services.sandbox and pipeline.executor.worker.fitness is services.fitness
    pipeline.send([EvaluationTask("wanda", CANDIDATES["wanda"], level=0)])
    finished = pipeline.collect("wanda")
    assert finished.result.status == "ok" and finished.started <= finished.finished
    services.close()


@pytest.mark.slow
def test_a_self_data_worker_scores_the_hosts_windows(tmp_path, tiny_llama_dir):
    """`--data self --seed 7`: a worker built from the run's config samples the host's text and so
    scores exactly the host's fitness windows (a worker on another seed would not)."""
    import torch

    from autoprune.agent.config import RunConfig
    from autoprune.agent.setup import prepare

    config = RunConfig(model=str(tiny_llama_dir), data="self", seed=7, seqlen=32, fitness_levels=[2, 4],
                       calibration_samples=2, sandbox="process", executor="local", workers=2)
    prepared = prepare(config, tmp_path)
    spec = WorkerSpec.from_config(config, prepared.bundle.folder, prepared.fitness.levels)
    worker = EvaluationWorker.from_spec(spec)
    assert torch.equal(worker.fitness.windows.ids, prepared.fitness.windows.ids)


@pytest.fixture
def two_node_cluster():
    """A real two-node Ray cluster on this machine: a head and a second node, each declaring 2 GPUs and
    3 CPUs as logical resources (no GPU needed: Ray assigns the ids, the process sandbox ignores them)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "num_gpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=3, num_gpus=2)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_ray_workers_use_the_gpus_ray_assigned_them_on_each_node(small_run, serial_results, two_node_cluster):
    """Issue 18: `--executor ray --gpus 0,1 --workers 4` on two nodes of 2 GPUs each: every actor holds
    its own (node, GPU) slot, its sandbox container would get exactly that GPU, and the candidates'
    verdicts and fitness are the serial executor's. More workers than GPUs (or CPUs) is one clear error,
    and so is a batch whose actors died with their node."""
    from docker.types import DeviceRequest

    from autoprune.agent.executors import check_cluster_fits
    from autoprune.sandbox.docker_backend import container_config
    from autoprune.sandbox.verdict import SandboxLimits

    spec = replace(small_run, limits=SandboxLimits(gpus="0,1"))       # what --gpus 0,1 puts in every spec
    address = two_node_cluster.address
    executor = make_executor("ray", spec, workers=4, ray_address=address, gpus=["0", "1"])
    try:
        slots = executor.ray.get([actor.slot.remote() for actor in executor.actors])
        results = executor.map(tasks())
        with pytest.raises(BadInputError, match=r"--workers 5 needs 5 GPUs, the Ray cluster at .* has 4"):
            make_executor("ray", spec, workers=5, ray_address=address, gpus=["0", "1"])
        (second,) = two_node_cluster.worker_nodes        # a node dies: its actors' tasks fail the batch
        two_node_cluster.remove_node(second, allow_graceful=False)
        with pytest.raises(AutopruneError, match="a Ray worker died .* --resume"):
            executor.map(tasks()[:4])
    finally:
        executor.close()
    nodes = {node for node, _ in slots}
    assert len(nodes) == 2
    assert sorted((node, limits.gpus) for node, limits in slots) == sorted((n, g) for n in nodes for g in "01")
    for _, limits in slots:
        config = container_config("autoprune-sandbox:latest", limits, 1 << 20, bundle=Path("/b"),
                                  inputs=Path("/i"), code=Path("/c"))
        assert config["device_requests"] == [DeviceRequest(device_ids=[limits.gpus], capabilities=[["gpu"]])]
    assert comparable(results) == comparable(serial_results)

    with pytest.raises(BadInputError, match=r"--workers 7 needs 7 CPUs"):
        check_cluster_fits({"CPU": 6.0, "GPU": 4.0}, 7, 0.0, address)


def test_a_workers_torch_device_is_its_gpus_place_among_the_visible_ones(monkeypatch):
    """Docker names a node's GPU by its id; torch, under CUDA_VISIBLE_DEVICES (Ray sets it for an actor
    given a GPU), by its place in that list."""
    spec = WorkerSpec(bundle_dir="/b", device="cuda", gpu="3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert spec.model_device() == "cuda:0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert spec.model_device() == "cuda:1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert spec.model_device() == "cuda:3"
