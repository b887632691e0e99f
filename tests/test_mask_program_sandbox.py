"""The mask-program kind (`prune(W, X, sparsity, pattern) -> mask`) through the real Docker sandbox.

A tiny Llama calibrated for real (XᵀX kept), its bundle with X.gram and a lean one without. The
SparseGPT and ALPS-class seeds run in the container and come back verified (the SparseGPT one
with the trusted SparseGPT selection's masks); then every way a mask program can cheat or fail
ends with its verdict and a message the LLM can act on: a wrong shape, dtype or type, weights
instead of a mask, a wrong count or N:M pattern, state kept from one layer to the next, both
kinds in one file, an uncollected X.gram, an endless loop.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from autoprune.agent.mask_seeds import ALPS_MASK, SPARSEGPT_MASK
from autoprune.errors import SandboxError
from autoprune.pruning.calibration import collect_activation_stats
from autoprune.pruning.masks import SparsityPattern, verify_mask
from autoprune.pruning.sparsegpt import sparsegpt_prune
from autoprune.sandbox import SandboxLimits, ScoringRequest, run_candidate, write_scoring_bundle
from autoprune.sandbox.gate import check_source
from autoprune.sandbox.session import SandboxSession
from sandbox_support import folder_digest, require_docker_image

pytestmark = pytest.mark.docker
LIMITS = SandboxLimits(timeout_s=120.0, memory_bytes=1 << 30)
TWO_FOUR = SparsityPattern(2, 4)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(model, stats with XᵀX for every layer) of a tiny Llama on random token windows."""
    from autoprune.data import WindowSet
    from autoprune.sandbox.tiny import tiny_llama

    try:
        require_docker_image()
    except SandboxError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Docker mask-program tests: {exc}")
        pytest.skip(str(exc))
    model = tiny_llama(seed=3)
    windows = WindowSet(torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(3)), "8x64")
    return model, collect_activation_stats(model, windows, with_hessian=True, with_gram=True)


@pytest.fixture(scope="module")
def gram_bundle(calibrated, tmp_path_factory):
    model, stats = calibrated
    return write_scoring_bundle(model, stats, tmp_path_factory.mktemp("gram-bundle"), with_gram=True)


@pytest.fixture(scope="module")
def lean_bundle(calibrated, tmp_path_factory):
    model, stats = calibrated
    return write_scoring_bundle(model, stats, tmp_path_factory.mktemp("lean-bundle"))


@pytest.fixture(scope="module")
def session(gram_bundle):
    with SandboxSession(gram_bundle, LIMITS) as warm:
        yield warm


def masks_request(bundle, sparsity=0.5, pattern=SparsityPattern()) -> ScoringRequest:
    return ScoringRequest(sparsity={name: sparsity for name in bundle.names}, pattern=pattern)


@pytest.mark.parametrize("pattern,sparsity", [(SparsityPattern(), 0.5), (SparsityPattern(), 0.7), (TWO_FOUR, 0.5)],
                         ids=["50%", "70%", "2:4"])
def test_the_sparsegpt_mask_program_returns_the_trusted_sparsegpt_masks(pattern, sparsity, session, calibrated,
                                                                        gram_bundle):
    assert gram_bundle.offered()["has_gram"] and check_source(SPARSEGPT_MASK, offered=gram_bundle.offered()).ok
    verdict = session.run(SPARSEGPT_MASK, masks_request(gram_bundle, sparsity, pattern))
    assert verdict.status == "ok", verdict.message
    assert verdict.group == "layer" and set(verdict.masks) == set(gram_bundle.names)
    model, stats = calibrated
    weights = dict(model.named_modules())
    for name, mask in verdict.masks.items():
        trusted, _ = sparsegpt_prune(weights[name].weight.detach(), stats[name].gram, sparsity, pattern)
        agreement = (mask == trusted).float().mean().item()
        assert agreement >= 0.99, (name, agreement)


@pytest.mark.parametrize("pattern", [SparsityPattern(), TWO_FOUR], ids=["50%", "2:4"])
def test_the_alps_mask_program_runs_and_its_masks_are_verified(pattern, session, gram_bundle):
    verdict = session.run(ALPS_MASK, masks_request(gram_bundle, 0.5, pattern))
    assert verdict.status == "ok", verdict.message
    for name, mask in verdict.masks.items():
        verify_mask(mask, gram_bundle.layer(name).shape, 0.5, group="layer", pattern=pattern, name=name)


def test_a_mask_program_has_a_profile_for_the_finale(session, gram_bundle):
    """SDSA reads score distributions; a mask program has none, so its profile is |W|'s."""
    verdict = session.run(SPARSEGPT_MASK, ScoringRequest(mode="profile"))
    assert verdict.status == "ok", verdict.message
    assert set(verdict.profile["layers"]) == set(gram_bundle.names)


PRUNE = "import torch\n\n\ndef prune(W, X, sparsity, pattern):\n"
LOWEST = ("    s = W.abs().reshape(-1)\n"
          "    drop = s.topk(round(W.numel() * sparsity), largest=False).indices\n"
          "    keep = torch.ones(W.numel(), dtype=torch.bool).scatter(0, drop, False).reshape(W.shape)\n")


@pytest.mark.parametrize("body,status,words", [
    ("    return torch.ones(3, 3, dtype=torch.bool)\n", "invalid-output", ["prune() returned shape (3, 3)"]),
    ("    return W\n", "invalid-output", ["values other than 0 and 1", "not weights"]),
    (LOWEST + "    return W * keep\n", "invalid-output", ["values other than 0 and 1"]),       # refitted weights
    (LOWEST + "    return keep.float() * 2\n", "invalid-output", ["values other than 0 and 1"]),
    (LOWEST + "    return keep.float().masked_fill(keep, float('nan'))\n", "invalid-output", ["other than 0 and 1"]),
    (LOWEST + "    return keep.tolist()\n", "invalid-output", ["returned list", "plain torch.Tensor"]),
    (LOWEST + "    return keep.to_sparse()\n", "rejected-static", ["to_sparse"]),
    ("    return torch.ones_like(W, dtype=torch.bool)\n", "invalid-output", ["weights pruned, expected exactly"]),
    (LOWEST + "    return keep.as_subclass(torch.Tensor)\n", "rejected-static", ["as_subclass"]),
    ("    return W.abs() > 0\n\n\ndef score(W, X):\n    return W.abs()\n", "rejected-static", ["defines both"]),
    ("    while True:\n        pass\n", "timeout", ["wall-clock limit"]),
], ids=["shape", "weights", "refitted-weights", "not-0-1", "nan", "list", "sparse", "count", "subclass",
        "both-kinds", "endless-loop"])
def test_a_cheating_or_broken_mask_program_gets_its_verdict(body, status, words, gram_bundle):
    limits = replace(LIMITS, timeout_s=10.0) if status == "timeout" else LIMITS
    before = folder_digest(gram_bundle.folder)
    verdict = run_candidate(PRUNE + body, gram_bundle, masks_request(gram_bundle), backend="docker", limits=limits)
    assert verdict.status == status, verdict.message
    for word in words:
        assert word in verdict.message, verdict.message
    assert verdict.masks is None and "Traceback" not in verdict.message
    assert folder_digest(gram_bundle.folder) == before


def test_a_0_1_float_mask_is_accepted_as_a_mask(session, gram_bundle):
    verdict = session.run(PRUNE + LOWEST + "    return keep.float()\n", masks_request(gram_bundle))
    assert verdict.status == "ok", verdict.message
    for name, mask in verdict.masks.items():
        assert mask.dtype == torch.bool


def test_an_unstructured_mask_under_a_2_4_request_is_refused(session, gram_bundle):
    verdict = session.run(PRUNE + LOWEST + "    return keep\n", masks_request(gram_bundle, 0.5, TWO_FOUR))
    assert verdict.status == "invalid-output" and "not a 2:4 pattern" in verdict.message, verdict.message


def test_a_real_tensor_subclass_is_refused_even_without_the_gate(gram_bundle):
    """The gate cannot be asked to make one, so the raw worker returns one: `type(mask) is Tensor`."""
    source = ("import torch\n\nclass Sneaky(torch.Tensor):\n    pass\n\n\ndef prune(W, X, sparsity, pattern):\n"
              + LOWEST + "    return keep.as_subclass(Sneaky)\n")
    verdict = run_candidate(source, gram_bundle, masks_request(gram_bundle), backend="docker",
                            limits=replace(LIMITS, raw=True))
    assert verdict.status == "invalid-output" and "returned Sneaky" in verdict.message, verdict.message


STATEFUL = [
    # a module-level list: each layer runs a fresh module, so it is empty on every layer
    ("SEEN = []\n\n\ndef prune(W, X, sparsity, pattern):\n", "    SEEN.append(W)\n    if len(SEEN) > 1:\n"
     "        return torch.ones_like(W, dtype=torch.bool)\n"),
    # a mutable default: the same, also fresh per layer
    ("\n\ndef prune(W, X, sparsity, pattern, *, memo={}):\n", "    memo[X.name] = W.sum().item()\n"
     "    if len(memo) > 1:\n        return torch.ones_like(W, dtype=torch.bool)\n"),
]


@pytest.mark.parametrize("head,leak", STATEFUL, ids=["module-list", "mutable-default"])
def test_no_state_survives_from_one_layer_to_the_next(head, leak, session, gram_bundle):
    """A program that would break (keep everything) once it saw a second layer never sees one."""
    verdict = session.run("import torch\n" + head + leak + LOWEST + "    return keep\n", masks_request(gram_bundle))
    assert verdict.status == "ok", verdict.message
    assert len(verdict.masks) == len(gram_bundle.names) > 1


def test_reading_an_uncollected_gram_is_refused_before_the_sandbox(lean_bundle):
    offered = lean_bundle.offered()
    assert offered == {"has_hessian": True, "has_gram": False, "has_grad": False}
    gate = check_source(SPARSEGPT_MASK, offered=offered)            # the host, before any container
    assert not gate.ok and "did not collect `X.gram`" in gate.message
    verdict = run_candidate(SPARSEGPT_MASK, lean_bundle, masks_request(lean_bundle), backend="docker", limits=LIMITS)
    # run_candidate passes the bundle's offer to the gate: refused before any container starts
    assert verdict.status == "rejected-static" and "did not collect `X.gram`" in verdict.message, verdict.message
