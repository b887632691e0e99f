"""Rank signatures: rewrites that prune identically share one; the signature is sound on real masks."""

from __future__ import annotations

import types

import pytest
import torch

from autoprune.agent.archive import SEED_SOURCES, metric_fingerprint
from autoprune.agent.expression import wrap_expression
from autoprune.agent.rank_equivalence import rank_signature

SAME_RANKING = [
    ("W.pow(2) * X.sq_mean", "W.abs() * X.norm.unsqueeze(0)"),                  # (|W|·‖X‖)²/N
    ("torch.abs(W) * torch.sqrt(X.sq_mean)", "W.abs() * X.norm"),
    ("W.abs() * X.norm + 1e-8", "3 * W.abs() * X.norm"),                         # shift, positive scale
    ("W.pow(2) * X.sq_mean.pow(1.5) * X.norm", "W.pow(2) * X.sq_mean.pow(2.0)"),
    ("W.pow(2) * X.norm", "W.abs().pow(2.0) * X.norm"),
    ("W.pow(2) * X.norm", "(W * W) * X.sq_mean ** 0.5"),
    ("W.pow(2) * (X.sq_mean + X.max_abs)", "W.abs() * (X.max_abs + X.sq_mean).sqrt()"),
    ("W.pow(2) * (X.sq_mean + (X.norm + X.sq_mean))", "W.pow(2) * (X.norm + X.sq_mean + X.sq_mean)"),
    ("W.abs() * (2 * X.var + 2 * X.norm)", "W.abs() * (X.var + X.norm)"),
    ("W.abs() / X.var", "W.pow(2) / X.var.pow(2)"),
    ("W.abs() * X.norm.log1p()", "W.abs() * X.norm.log1p() * 3"),               # opaque parts compared as text
    ("W.pow(2) * X.sq_mean * (1 + X.layer_index / X.num_layers)", "W.abs() * X.norm"),   # a layer's constant
]
DIFFERENT_RANKING = [
    ("W.abs() * X.norm", "W * X.norm"),                                          # signed weights
    ("W.abs() * X.norm", "-W.abs() * X.norm"),                                   # order reversed
    ("W.abs() * X.norm", "W.abs() * X.norm.pow(0.5)"),
    ("W.abs() * X.norm", "W.abs() * X.sq_mean"),
    ("W.abs() * (X.var + X.norm)", "W.abs() * (X.var + 2 * X.norm)"),
    ("W.pow(2) * X.var", "W.pow(2) * (X.var + X.sq_mean)"),
    ("W.abs() * X.norm.log1p()", "W.abs() * X.norm.log()"),
    ("W.abs() * X.norm * X.layer_index", "W.abs() * X.norm"),                     # 0 in layer 0: all alike
    ("W.abs() * (X.norm + X.layer_index)", "W.abs() * X.norm"),
]


@pytest.mark.parametrize("first, second", SAME_RANKING)
def test_rewrites_that_rank_alike_share_a_signature(first, second):
    assert rank_signature(first) == rank_signature(second)


@pytest.mark.parametrize("first, second", DIFFERENT_RANKING)
def test_different_rankings_have_different_signatures(first, second):
    assert rank_signature(first) != rank_signature(second)


def test_group_is_part_of_the_signature_and_garbage_has_none():
    assert rank_signature("W.abs() * X.norm", "row") != rank_signature("W.abs() * X.norm", "layer")
    assert rank_signature("W.abs() * (") is None
    assert rank_signature("W" + " + W" * 20000) is None                          # too deep: no opinion
    assert rank_signature("W.abs() * 1e300 ** 2") is None                        # overflow
    assert rank_signature("W.abs() * 0 ** -1") is not None                       # 0 ** -1 stays opaque


def _row_masks(expression: str, stats: types.SimpleNamespace, W: torch.Tensor) -> torch.Tensor:
    """Half of each row kept, by the expression's score (evaluated here: these are the test's own
    expressions, never an LLM's)."""
    score = torch.broadcast_to(eval(expression, {"torch": torch}, {"W": W, "X": stats}), W.shape)
    return torch.zeros_like(W, dtype=torch.bool).scatter_(1, score.topk(W.shape[1] // 2, dim=1).indices, True)


def test_a_shared_signature_means_identical_masks_on_real_statistics():
    """Soundness: every SAME_RANKING pair prunes identically in every layer on activation statistics
    with the contract's relations (norm = sqrt(N · sq_mean)); every DIFFERENT_RANKING pair does not
    (in some layer: X.layer_index is 0 in the first)."""
    torch.manual_seed(0)
    tokens = torch.randn(4096, 64, dtype=torch.float64) * torch.rand(64, dtype=torch.float64) * 4
    tokens += torch.randn(64, dtype=torch.float64)
    W = torch.randn(32, 64, dtype=torch.float64)
    layers = [types.SimpleNamespace(norm=tokens.norm(dim=0), sq_mean=tokens.pow(2).mean(0),
                                    var=tokens.var(0, unbiased=False), max_abs=tokens.abs().amax(0),
                                    mean=tokens.mean(0), layer_index=index, num_layers=30) for index in (0, 7)]
    for first, second in SAME_RANKING:
        for stats in layers:
            assert torch.equal(_row_masks(first, stats, W), _row_masks(second, stats, W)), (first, second)
    for first, second in DIFFERENT_RANKING:
        assert any(not torch.equal(_row_masks(first, stats, W), _row_masks(second, stats, W))
                   for stats in layers), (first, second)


def test_the_fingerprint_of_an_expression_candidate_is_its_ranking():
    """write_code's "already tested" check sees a rewrite of the Wanda seed as Wanda."""
    rewrite = wrap_expression("W.pow(2) * X.sq_mean", hypothesis="squares")
    assert metric_fingerprint(rewrite) == metric_fingerprint(SEED_SOURCES["seed-wanda"])
    assert metric_fingerprint(wrap_expression("W.abs() * X.var")) != metric_fingerprint(SEED_SOURCES["seed-wanda"])
    assert (metric_fingerprint(wrap_expression("W.abs() * X.norm", group="layer"))
            != metric_fingerprint(SEED_SOURCES["seed-wanda"]))
    full_program = "import torch\n\ndef score(W, X):\n    a = W.abs()\n    return a * X.norm\n"
    assert metric_fingerprint(full_program) == metric_fingerprint("import torch\n\ndef score(W, X):\n"
                                                                  "    '''doc'''\n    a = W.abs()\n    return a * X.norm\n")
