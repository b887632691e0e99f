"""Parallel evaluation: a local pool and a real Ray cluster give exactly the serial results."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from autoprune.agent.executors import EvaluationTask, LocalPoolExecutor, SerialExecutor, WorkerSpec, make_executor
from autoprune.data import calibration_windows, load_corpus
from autoprune.errors import BadInputError
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
    executor = SerialExecutor(small_run)
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
    from autoprune.agent.trace import read_trace

    assert state["budget_used"] == 4 and sum(state["verdicts"].values()) == 7
    assert set(state["verdicts"]) <= {"ok", "duplicate"}              # near-twins on a random tiny model
    assert {"g001-a0", "g001-a1", "g002-a0", "g002-a1"} <= set(state["candidates"])
    events = read_trace(run_dir).events
    verify_visits = [e for e in events if e["type"] == "node_entered" and e["node"] == "verify"]
    assert len(verify_visits) == 3                                   # seeds, then two batches of two
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
