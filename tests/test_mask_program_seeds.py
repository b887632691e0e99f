"""The mask-program kind without the container: the contract's definition and what derives from it
(gate, code extraction, prompts, the one uncollected-field refusal), and the mask-program seeds
(agent/mask_seeds.py) run by the worker's own restricted execution against the trusted SparseGPT
and ALPS-class selections on a tiny layer. The same programs through Docker:
tests/test_mask_program_sandbox.py.
"""

from __future__ import annotations

import re

import pytest
import torch

from autoprune.agent.archive import SEED_SOURCES, seed_sources, write_seeds
from autoprune.agent.codegen import CONTRACT_HINT, CandidateFormatError, candidate_from_reply
from autoprune.agent.expression import validate_expression
from autoprune.agent.mask_seeds import ALPS_MASK, ALPS_MASK_ID, SPARSEGPT_MASK, SPARSEGPT_MASK_ID
from autoprune.prompts import get_prompt_set
from autoprune.pruning import contract
from autoprune.pruning.alps import alps_prune
from autoprune.pruning.masks import SparsityPattern, scores_to_mask, verify_mask
from autoprune.pruning.reconstruct import exact_reconstruction, layer_error
from autoprune.pruning.sparsegpt import sparsegpt_prune
from autoprune.pruning.stats import RunningChannelStats
from autoprune.sandbox.gate import check_source, needs_of
from autoprune.sandbox.worker import WorkerFailure, checked_mask, load_program

SETTINGS = [(SparsityPattern(), 0.5), (SparsityPattern(), 0.7), (SparsityPattern(2, 4), 0.5)]
SETTING_IDS = ["50%", "70%", "2:4"]
GRAM = {"has_gram": True}


@pytest.fixture(scope="module")
def tiny_layer():
    """W (96 × 256) and X of correlated, heavy-tailed inputs (XᵀX far from diagonal)."""
    torch.manual_seed(0)
    mix = torch.randn(256, 256) / 16 + torch.eye(256)
    x = torch.randn(2048, 256) @ mix * (torch.rand(256).pow(3) * 5 + 0.1)
    running = RunningChannelStats(256, with_gram=True)
    running.update(x)
    return torch.randn(96, 256), running.finish(layer_index=0, num_layers=1, name="q_proj")


def seed_mask(source: str, W, X, sparsity: float, pattern: SparsityPattern) -> torch.Tensor:
    """The mask a seed returns under the sandbox's policy (compiled and guarded as in the container)."""
    program = load_program(source, raw=False)
    assert program.kind is contract.PRUNE and program.group == "layer"
    return checked_mask(program.fresh(), W, X, sparsity, pattern, program.group, "layer")


def refit_error(W, X, mask) -> float:
    """What the user gets from a mask: the layer's output error after the trusted exact refit."""
    return layer_error(W, exact_reconstruction(W, mask, X, None), X.gram)


# ---- the seeds against the trusted selections ----------------------------------------------------

@pytest.mark.parametrize("pattern,sparsity", SETTINGS, ids=SETTING_IDS)
def test_the_sparsegpt_seed_chooses_the_trusted_sparsegpt_mask(pattern, sparsity, tiny_layer):
    W, X = tiny_layer
    mask = seed_mask(SPARSEGPT_MASK, W, X, sparsity, pattern)
    trusted, _ = sparsegpt_prune(W, X.gram, sparsity, pattern)
    agreement = (mask == trusted).float().mean().item()
    assert agreement >= 0.99, agreement
    verify_mask(mask, tuple(W.shape), sparsity, group="layer", pattern=pattern)


@pytest.mark.parametrize("pattern,sparsity", SETTINGS, ids=SETTING_IDS)
def test_the_alps_seed_beats_sparsegpts_mask_and_nears_the_trusted_alps(pattern, sparsity, tiny_layer):
    """All three masks get the same trusted refit: the seed's support is the better one."""
    W, X = tiny_layer
    seed = refit_error(W, X, seed_mask(ALPS_MASK, W, X, sparsity, pattern))
    sparsegpt = refit_error(W, X, sparsegpt_prune(W, X.gram, sparsity, pattern)[0])
    alps = refit_error(W, X, alps_prune(W, X.gram, sparsity, pattern)[0])
    wanda = refit_error(W, X, scores_to_mask(W.abs() * X.norm, sparsity, group="row", pattern=pattern))
    assert seed < 0.95 * sparsegpt and seed < wanda, (seed, sparsegpt, wanda)
    assert seed <= 1.06 * alps, (seed, alps)


def test_the_mask_seeds_run_only_when_the_run_carries_xtx(tmp_path):
    for offered in ({}, {"has_hessian": True}):
        assert not {SPARSEGPT_MASK_ID, ALPS_MASK_ID} & set(seed_sources(**offered))
    assert {SPARSEGPT_MASK_ID, ALPS_MASK_ID} <= set(seed_sources(**GRAM))
    ids, records = write_seeds(tmp_path, **GRAM)
    for cid in (SPARSEGPT_MASK_ID, ALPS_MASK_ID):
        assert cid in ids and records[cid]["origin"] == "seed"
        source = (tmp_path / records[cid]["path"]).read_text()
        assert needs_of(source) == {"gram"}
        gate = check_source(source, offered=GRAM)
        assert gate.ok and gate.kind == "prune" and gate.group == "layer", gate.message
        assert "did not collect `X.gram`" in check_source(source, offered={"has_hessian": True}).message


# ---- the contract defines the kind once; gate, extraction, hints and prompts follow --------------

def test_the_contract_defines_both_kinds_and_the_pattern_argument():
    assert [k.signature for k in contract.KINDS] == ["def score(W, X)", "def prune(W, X, sparsity, pattern)"]
    assert contract.pattern_argument(2, 4) == {"n": 2, "m": 4} and contract.pattern_argument(0, 0) is None
    assert contract.PRUNE.group == "layer" and contract.SCORE.group == "row"


@pytest.mark.parametrize("source,words", [
    ("def score(W, X):\n    return W\n\ndef prune(W, X, sparsity, pattern):\n    return W > 0\n",
     ["defines both", "exactly one"]),
    ("def prune(W, X, sparsity):\n    return W > 0\n", ["('prune' takes 3)", "no top-level 'def prune(W, X, sparsity, pattern)' with exactly 4"]),
    ("def helper(W):\n    return W\n", ["def score(W, X)", "def prune(W, X, sparsity, pattern)"]),
    ("GROUP = 'rows'\ndef prune(W, X, sparsity, pattern):\n    return W > 0\n", ["GROUP must be"]),
])
def test_the_gate_reads_the_kind_from_the_contract(source, words):
    gate = check_source(source)
    assert not gate.ok
    for word in words:
        assert word in gate.message, gate.message


def test_one_refusal_for_uncollected_fields_in_expressions_and_programs():
    offered = {"has_hessian": True}
    expected = contract.not_offered_message(["gram"], **offered)
    with pytest.raises(CandidateFormatError) as expression:
        validate_expression("W.abs() * X.gram.diagonal()", offered)
    program = "def prune(W, X, sparsity, pattern):\n    H = X.gram\n    return W.abs() > H.diagonal()\n"
    gate = check_source(program, offered=offered)
    assert expected in str(expression.value) and f"Line 2: {expected}" in gate.message
    with pytest.raises(CandidateFormatError, match="did not collect `X.gram`"):
        candidate_from_reply(f"```python\n{program}```", "program", offered=offered)
    assert check_source(program, offered=GRAM).ok and check_source(program).ok   # None: the worker decides


def test_code_extraction_accepts_a_mask_program():
    reply = ("Here is an OBS-flavoured mask program:\n```python\nfrom typing import Optional\n\n"
             "def obs_prune(W, X, sparsity, pattern):\n    s = W.abs() * X.norm\n"
             "    return s >= s.median()\n```\nIt keeps the larger half.")
    source = candidate_from_reply(reply, "program")
    assert "def prune(W, X, sparsity, pattern)" in source and "typing" not in source
    assert check_source(source).kind == "prune"
    assert "def prune(W, X, sparsity, pattern)" in CONTRACT_HINT and "def score(W, X)" in CONTRACT_HINT


@pytest.mark.parametrize("template", ["write_code_program", "repair_program", "hypothesise"])
def test_the_program_prompts_describe_the_mask_program_kind(template):
    text = get_prompt_set().render_text(template, hypothesis="h", error="e", source="s", archive="a",
                                        analysis="a", insights="i", has_gram=True)
    assert "def prune(W, X, sparsity, pattern)" in text and "keep-mask" in text
    for name, _ in contract.PRUNE_ARGUMENTS:
        assert f"In prune, {name} is" in text
    assert "X.gram (XᵀX)" in text
    lean = get_prompt_set().render_text(template, hypothesis="h", error="e", source="s", archive="a",
                                        analysis="a", insights="i")
    assert "def prune(W, X, sparsity, pattern)" in lean and "X.gram" not in lean


@pytest.mark.parametrize("pattern,sparsity", SETTINGS, ids=SETTING_IDS)
def test_the_prompts_mask_program_example_passes_the_gate_and_gives_verified_masks(pattern, sparsity, tiny_layer):
    text = get_prompt_set().render_text("write_code_program", hypothesis="h", archive="a")
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def prune" in b]
    assert check_source(example).ok
    W, X = tiny_layer
    mask = seed_mask(example, W, X, sparsity, pattern)
    expected = scores_to_mask(W.abs() * X.norm, sparsity, group="layer", pattern=pattern)
    assert (mask == expected).float().mean().item() > 0.999      # ties may fall either way


def test_the_worker_refuses_a_module_defining_both_kinds():
    with pytest.raises(WorkerFailure, match="defines both score and prune"):
        load_program("def score(W, X):\n    return W\n\ndef prune(W, X, sparsity, pattern):\n    return W > 0\n",
                     raw=False)


def test_every_seed_passes_the_gate_with_what_it_needs():
    for cid, source in SEED_SOURCES.items():
        offered = {contract.FLAGS[need]: True for need in needs_of(source)}
        assert check_source(source, offered=offered).ok, cid
