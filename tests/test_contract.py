"""The candidate contract, stated once (autoprune/pruning/contract.py), and what derives from it.

Every consumer is checked by iterating the contract, so a new statistic is covered by adding
its one entry: ActivationStats, the (de)serialisation, the scoring bundle and the worker, the
sandbox's allow-list, the expression grammar and hints, the prompts, rank equivalence and
mutation. Then the Hessian statistics against their closed forms, and SparseGPT's saliency
as a candidate through the real Docker sandbox (plus candidates reaching past the contract).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open

from autoprune.agent.codegen import CONTRACT_HINT
from autoprune.agent.expression import (
    X_FIELDS, CandidateFormatError, candidate_from_expression_reply, expression_hint, validate_expression,
)
from autoprune.agent.mutation import UNITS, mutations, swap_fields
from autoprune.agent.rank_equivalence import rank_signature
from autoprune.prompts import get_prompt_set
from autoprune.pruning import contract
from autoprune.pruning.calibration import add_hessian_stats, collect_activation_stats, finish_stats
from autoprune.pruning.masks import scores_to_mask
from autoprune.pruning.sparsegpt import DAMP
from autoprune.pruning.stats import ActivationStats, RunningChannelStats
from autoprune.sandbox import SandboxLimits, ScoringRequest, run_candidate, write_scoring_bundle
from autoprune.sandbox.gate import check_source
from autoprune.sandbox.policy import STATS_ATTRIBUTES, GuardError, guarded_getattr
from autoprune.sandbox.worker import layer_stats
from sandbox_support import require_docker_image

EVERYTHING = {"has_hessian": True, "has_gram": True, "has_grad": True}
SPECS = contract.STATISTICS
TENSORS = [s for s in SPECS if s.is_tensor]
CHANNELS = [s for s in SPECS if s.is_channel]


def ids(specs):
    return [s.name for s in specs]


def full_stats(in_features: int = 6, out_features: int = 4, tokens: int = 32) -> ActivationStats:
    """Every contract field filled (closed forms of random inputs)."""
    x = torch.randn(tokens, in_features, dtype=torch.float64)
    running = RunningChannelStats(in_features, with_gram=True)
    running.update(x)
    stats = finish_stats({"layer": running}, {"layer": 1}, 3)["layer"]
    add_hessian_stats(stats)
    stats.grad = torch.rand(out_features, in_features)
    return stats


def uses(spec: contract.StatisticSpec) -> str:
    """An expression reading the field, shaped to broadcast against W (out, in)."""
    return f"W.abs() * X.{spec.name}.diagonal()" if spec.shape == contract.SQUARE else f"W.abs() * X.{spec.name}"


# ---- every consumer knows every entry -----------------------------------------------------------

def test_activation_stats_has_exactly_the_contracts_fields():
    own = {f.name for f in dataclasses.fields(ActivationStats)} - {"extras"}     # trusted-only
    own |= {name for name, value in vars(ActivationStats).items() if isinstance(value, property)}
    assert own == set(contract.NAMES)
    stats = full_stats()
    for spec in TENSORS:
        value = getattr(stats, spec.name)
        assert isinstance(value, torch.Tensor), spec.name
        expected = {contract.CHANNEL: (6,), contract.SQUARE: (6, 6), contract.WEIGHT: (4, 6)}[spec.shape]
        assert tuple(value.shape) == expected, spec.name
    for spec in SPECS:
        if spec.shape == contract.INTEGER:
            assert isinstance(getattr(stats, spec.name), int), spec.name


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """(the host's stats of one layer, {with_gram: what the worker reads back from the bundle})."""
    from autoprune.sandbox.tiny import synthetic_stats, tiny_llama

    model = tiny_llama()
    stats = synthetic_stats(model)
    for s in stats.values():
        x = torch.randn(16, s.in_features)
        s.gram, s.hinv_diag = x.T @ x, torch.rand(s.in_features) + 0.1
    name = next(iter(stats))
    stats[name].grad = torch.rand(tuple(dict(model.named_modules())[name].weight.shape))
    seen = {}
    for with_gram in (False, True):
        bundle = write_scoring_bundle(model, stats, tmp_path_factory.mktemp("bundle"), with_gram=with_gram)
        with safe_open(str(bundle.folder / "stats.safetensors"), "pt") as sf:
            seen[with_gram] = layer_stats(sf, {**bundle.layer(name).__dict__})
    return stats[name], seen


@pytest.mark.parametrize("spec", TENSORS, ids=ids(TENSORS))
def test_every_tensor_field_survives_the_bundle_into_the_worker(spec, bundled):
    host, read_back = bundled
    for with_gram, seen in read_back.items():
        carried = with_gram or spec.needs != "gram"      # lean bundles leave X.gram out
        assert (getattr(seen, spec.name) is not None) == carried, (spec.name, with_gram)
        if carried:
            assert torch.equal(getattr(seen, spec.name), getattr(host, spec.name).float())


def test_the_sandbox_allows_exactly_the_contract_on_x():
    assert STATS_ATTRIBUTES == frozenset(contract.NAMES)
    stats = full_stats()
    for name in contract.NAMES:
        assert guarded_getattr(stats, name) is getattr(stats, name) or name == "in_features"
    for name in ("extras", "to_tensors", "from_tensors", "shape"):
        with pytest.raises(GuardError, match="X has no field"):
            guarded_getattr(stats, name)


@pytest.mark.parametrize("spec", SPECS, ids=ids(SPECS))
def test_the_expression_grammar_and_hints_know_every_field(spec):
    if spec.shape == contract.TEXT:
        assert spec.name not in X_FIELDS        # text is no number: not in a scoring expression
        with pytest.raises(CandidateFormatError):
            validate_expression(f"W.abs() * X.{spec.name}")
        return
    assert spec.name in X_FIELDS
    validate_expression(uses(spec), EVERYTHING)
    assert check_source(candidate_from_expression_reply(uses(spec), offered=EVERYTHING)).ok
    if spec.needs is not None:              # a run that did not collect it: refused, with the reason
        with pytest.raises(CandidateFormatError, match=f"did not collect `X.{spec.name}`"):
            validate_expression(uses(spec))
    if spec.is_channel or spec.shape == contract.INTEGER:
        assert f"X.{spec.name}" in expression_hint(**EVERYTHING)
        assert (f"X.{spec.name}" in expression_hint()) == (spec.needs is None)
        assert (f"X.{spec.name}" in CONTRACT_HINT) == (spec.needs is None)


@pytest.mark.parametrize("spec", SPECS, ids=ids(SPECS))
def test_the_prompts_render_every_field_the_run_offers(spec):
    prompts = get_prompt_set()

    def program(**flags) -> str:           # the user turn that states the contract
        return prompts.render("write_code", code_style="program", **flags)[-1]["content"]

    def expression(**flags) -> str:        # the small model's system turn
        return prompts.render("write_code", code_style="expression", **flags)[0]["content"]

    assert f"X.{spec.name}" in program(**EVERYTHING)
    offered = spec.needs is None
    assert (f"X.{spec.name}" in program()) == offered
    if spec.is_tensor or spec.shape == contract.TEXT:
        assert spec.meaning in program(**EVERYTHING)
    if spec.is_channel or spec.shape == contract.INTEGER:
        assert (f"X.{spec.name}" in expression()) == offered
        assert f"X.{spec.name}" in expression(**EVERYTHING)
    hessian_only = program(has_hessian=True)
    assert (f"X.{spec.name}" in hessian_only) == (spec.needs in (None, "hessian"))


@pytest.mark.parametrize("spec", SPECS, ids=ids(SPECS))
def test_rank_equivalence_knows_every_fields_sign_and_identity(spec):
    if spec.shape == contract.TEXT:
        return
    x = f"X.{spec.name}" if spec.shape != contract.SQUARE else f"X.{spec.name}.diagonal()"
    same = lambda a, b: rank_signature(a) == rank_signature(b)  # noqa: E731
    if spec.sign == "positive-constant":          # a positive factor, one per layer: no effect on order
        assert same(f"W.abs() * X.norm * {x}", "W.abs() * X.norm")
    elif spec.sign == "constant":                  # one per layer, >= 0: 1 + it is a positive factor
        assert same(f"W.abs() * X.norm * (1 + {x})", "W.abs() * X.norm")
        assert not same(f"W.abs() * X.norm * {x}", "W.abs() * X.norm")      # it alone can be 0
    elif spec.sign in ("positive", "nonnegative"):     # s -> s**2 keeps the order of s >= 0
        assert same(f"W.abs() * {x}", f"W.pow(2) * {x}.pow(2)")
    else:
        assert not same(f"W.abs() * {x}", f"W.pow(2) * {x}.pow(2)")
    if spec.identity:
        product = " * ".join(f"X.{atom} ** {e}" for atom, e in spec.identity)
        assert same(f"W * {x}", f"W * ({product})")


def test_mutation_swaps_in_every_nonnegative_channel_statistic_the_run_offers():
    for flags in ({}, EVERYTHING, {"has_hessian": True}):
        offered = {s.name for s in contract.available(**flags) if s.is_channel}
        expected = {s.name for s in CHANNELS if s.sign in ("positive", "nonnegative")} & offered
        fields = swap_fields(**flags)
        assert set(fields) == expected
        found = mutations("W.abs() * X.norm", fields)
        for name in expected - {"norm"}:
            assert any(f"X.{name}" in m for m in found), name
        assert not any(f"X.{name}" in m for m in found for name in {s.name for s in CHANNELS} - expected)
    assert all(UNITS[s.name] for s in TENSORS)


# ---- the Hessian statistics equal their closed forms ---------------------------------------------

def test_hess_diag_and_hinv_diag_are_the_closed_forms_on_a_tiny_layer():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=generator, dtype=torch.float64) * torch.linspace(0.1, 3, 8, dtype=torch.float64)
    x[:, 5] = 0.0                                     # an input that never fires
    running = RunningChannelStats(8, with_gram=True)
    running.update(x[:25])
    running.update(x[25:])
    stats = finish_stats({"fc": running}, {"fc": 0}, 1)["fc"]
    add_hessian_stats(stats)
    H = x.T @ x
    torch.testing.assert_close(stats.hess_diag.double(), H.diagonal(), rtol=1e-6, atol=0)
    torch.testing.assert_close(stats.gram.double(), H, rtol=1e-6, atol=1e-6)
    H_used = H.clone()
    H_used[5, 5] = 1.0                                # SparseGPT's convention for dead inputs
    lam = DAMP * H_used.diagonal().mean()
    expected = torch.linalg.inv(H_used + lam * torch.eye(8, dtype=torch.float64)).diagonal()
    torch.testing.assert_close(stats.hinv_diag.double(), expected, rtol=1e-5, atol=0)
    assert stats.hinv_diag[5].item() == pytest.approx(1 / (1 + lam.item()), rel=1e-6)
    assert f"λ = {DAMP:g}·mean diag" in contract.BY_NAME["hinv_diag"].meaning     # what prompts say is true


def test_calibration_fills_the_hessian_fields_on_request(tiny_llama, tiny_windows, tmp_path):
    """hess_diag always; hinv_diag with `with_hessian` (XᵀX itself kept only `with_gram`); cached."""
    gram_only = collect_activation_stats(tiny_llama, tiny_windows, with_gram=True)
    hessian = collect_activation_stats(tiny_llama, tiny_windows, with_hessian=True, cache_dir=tmp_path)
    cached = collect_activation_stats(tiny_llama, tiny_windows, with_hessian=True, cache_dir=tmp_path)
    both = collect_activation_stats(tiny_llama, tiny_windows, with_hessian=True, with_gram=("mlp.down_proj",))
    for name, s in hessian.items():
        gram = gram_only[name].gram
        assert gram_only[name].hinv_diag is None and s.gram is None
        assert (both[name].gram is not None) == name.endswith(".mlp.down_proj")
        torch.testing.assert_close(s.hess_diag, gram.diagonal(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(s.hess_diag, s.norm ** 2, rtol=1e-4, atol=1e-6)
        H = gram.double()
        H.diagonal().add_(DAMP * H.diagonal().mean())
        torch.testing.assert_close(s.hinv_diag.double(), torch.linalg.inv(H).diagonal(), rtol=1e-4, atol=0)
        assert torch.equal(cached[name].hinv_diag, s.hinv_diag) and torch.equal(both[name].hinv_diag, s.hinv_diag)


# ---- SparseGPT's saliency through the real sandbox; candidates reaching past the contract ----------

OBS_SALIENCY = "W.abs()**2 / X.hinv_diag"


@pytest.fixture(scope="module")
def hessian_bundle(tmp_path_factory):
    """A lean bundle (no X.gram) of a tiny Llama calibrated with XᵀX: X.hinv_diag is carried."""
    from autoprune.data import WindowSet
    from autoprune.sandbox.tiny import tiny_llama

    require_docker_image()
    model = tiny_llama(seed=2)
    windows = WindowSet(torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2)), "4x32")
    stats = collect_activation_stats(model, windows, with_hessian=True, with_gram=True)
    return write_scoring_bundle(model, stats, tmp_path_factory.mktemp("hessian-bundle"))


@pytest.mark.docker
def test_sparsegpt_saliency_runs_in_the_docker_sandbox(hessian_bundle):
    source = candidate_from_expression_reply(f"```python\n{OBS_SALIENCY}\n```", offered={"has_hessian": True})
    request = ScoringRequest(sparsity={name: 0.5 for name in hessian_bundle.names})
    verdict = run_candidate(source, hessian_bundle, request, backend="docker",
                            limits=SandboxLimits(timeout_s=120, memory_bytes=1 << 30))
    assert verdict.status == "ok", verdict.message
    with safe_open(str(hessian_bundle.folder / "weights.safetensors"), "pt") as wf, \
            safe_open(str(hessian_bundle.folder / "stats.safetensors"), "pt") as sf:
        assert not any(key.endswith(".gram") for key in sf.keys())     # lean: XᵀX stays on the host
        for name in hessian_bundle.names:
            key = f"{name}.hinv_diag"       # linears reading one input share it: stored once
            W, hinv = wf.get_tensor(name), sf.get_tensor(hessian_bundle.aliases.get(key, key))
            expected = scores_to_mask(W.abs() ** 2 / hinv, 0.5, group="row")
            assert torch.equal(verdict.masks[name], expected), name


@pytest.mark.docker
@pytest.mark.parametrize("body, status, words", [
    ("    return W.abs() * X.extras['k']\n", "rejected-static", ["extras"]),
    ("    return W.abs() * X.to_tensors('p')['p.norm']\n", "rejected-static", ["to_tensors"]),
    ("    v = [X][0]\n    return W.abs() * v.shape[0]\n", "crashed", ["GuardError", "X has no field 'shape'"]),
])
def test_a_candidate_reaching_past_the_contract_is_refused(body, status, words, hessian_bundle):
    source = "import torch\n\ndef score(W, X):\n" + body
    request = ScoringRequest(sparsity={name: 0.5 for name in hessian_bundle.names})
    verdict = run_candidate(source, hessian_bundle, request, backend="docker",
                            limits=SandboxLimits(timeout_s=120, memory_bytes=1 << 30))
    assert verdict.status == status, verdict.message
    for word in words:
        assert word in verdict.message, verdict.message
