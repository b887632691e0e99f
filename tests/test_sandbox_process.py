"""The weaker process backend (no Docker): same worker, rlimits, empty env, group kill."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch

from autoprune.sandbox import SandboxLimits, ScoringRequest, run_candidate
from autoprune.sandbox.process_backend import WeakSandboxWarning
from autoprune.sandbox.tiny import tiny_bundle
from autoprune.sandbox.worker import WorkerFailure, load_candidate
from sandbox_support import WANDA, folder_digest, wanda_masks

LIMITS = SandboxLimits(timeout_s=90.0, memory_bytes=2 << 30, cpus=1.0)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


def run(source, bundle, request, limits=LIMITS):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakSandboxWarning)
        return run_candidate(source, bundle, request, backend="process", limits=limits)


def test_warns_loudly(bundle):
    request = ScoringRequest(sparsity={bundle.names[0]: 0.5})
    with pytest.warns(WeakSandboxWarning, match="WEAKER"):
        run_candidate(WANDA, bundle, request, backend="process", limits=LIMITS)


def test_wanda_and_n_m_masks(bundle):
    from autoprune.pruning.masks import SparsityPattern, scores_to_mask
    from safetensors.torch import load_file

    before = folder_digest(bundle.folder)
    verdict = run(WANDA, bundle, ScoringRequest(sparsity={n: 0.5 for n in bundle.names}))
    assert verdict.status == "ok", verdict.message
    expected = wanda_masks(bundle, 0.5)
    assert all(torch.equal(verdict.masks[n], expected[n]) for n in bundle.names)
    name = bundle.names[-1]
    nm = run(WANDA, bundle, ScoringRequest(sparsity={name: 0.5}, pattern=SparsityPattern(2, 4)))
    weights = load_file(str(bundle.folder / "weights.safetensors"))
    stats = load_file(str(bundle.folder / "stats.safetensors"))
    ref = scores_to_mask(weights[name].abs() * stats[f"{name}.norm"], 0.5,
                         pattern=SparsityPattern(2, 4))
    assert nm.status == "ok" and torch.equal(nm.masks[name], ref)
    assert folder_digest(bundle.folder) == before


def test_environment_is_empty(bundle, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-process-backend")
    source = "import os\nraise RuntimeError('ENV ' + repr(dict(os.environ)))\n"
    verdict = run(source, bundle, ScoringRequest(sparsity={bundle.names[0]: 0.5}),
                  replace(LIMITS, raw=True))
    assert verdict.status == "crashed" and "OMP_NUM_THREADS" in verdict.message
    assert "sk-test-process-backend" not in verdict.message


def test_timeout_kills_the_process_group(bundle):
    source = ("import os, time\nif os.fork() == 0:\n    time.sleep(3600)\ntime.sleep(3600)\n"
              "def score(W, X):\n    return W\n")
    verdict = run(source, bundle, ScoringRequest(sparsity={bundle.names[0]: 0.5}),
                  replace(LIMITS, raw=True, timeout_s=15.0))
    assert verdict.status == "timeout"


def test_gate_and_bad_output(bundle):
    request = ScoringRequest(sparsity={bundle.names[0]: 0.5})
    assert run("import socket\ndef score(W, X):\n    return W\n", bundle, request).status \
        == "rejected-static"
    nan = run("def score(W, X):\n    return W / 0 * 0\n", bundle, request)
    assert nan.status == "invalid-output" and "NaN" in nan.message


def test_worker_recompiles_with_the_policy():
    """A source that skipped the host gate is still refused by the worker itself."""
    with pytest.raises(WorkerFailure) as info:
        load_candidate("import os\ndef score(W, X):\n    return W\n", raw=False)
    assert info.value.kind == "rejected-static"
    score, group = load_candidate(WANDA + "GROUP = 'layer'\n", raw=False)
    assert group == "layer" and callable(score)


def test_memory_limit(bundle):
    source = "import torch\ndef score(W, X):\n    big = torch.ones(100000, 100000)\n    return W\n"
    verdict = run(source, bundle, ScoringRequest(sparsity={bundle.names[0]: 0.5}))
    assert verdict.status == "out-of-memory"
