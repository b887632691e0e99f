"""Scores → masks: exact counts per row / layer / N:M, verification, bit packing."""

from __future__ import annotations

import pytest
import torch

from autoprune.errors import BadInputError, MaskError
from autoprune.pruning.masks import (SparsityPattern, mask_sparsity, pack_mask, scores_to_mask, unpack_mask,
                                     verify_mask)


@pytest.fixture
def scores():
    return torch.randn(12, 40, generator=torch.Generator().manual_seed(0))


def test_row_group_prunes_the_same_count_in_every_row(scores):
    mask = scores_to_mask(scores, 0.3, group="row")
    assert ((~mask).sum(1) == int(40 * 0.3)).all()
    verify_mask(mask, (12, 40), 0.3, group="row")


def test_row_group_is_exact_when_a_row_count_is_fractional(scores):
    """0.4731 of 40 columns is 18.9 per row: the first rows prune 19, the rest 18, and the layer
    prunes round(12·40·0.4731) = 227 weights, so allocated sparsities average to the target."""
    mask = scores_to_mask(scores, 0.4731, group="row")
    per_row = (~mask).sum(1)
    assert int(per_row.sum()) == round(12 * 40 * 0.4731) == 227
    assert per_row.tolist() == [19] * 11 + [18]
    verify_mask(mask, (12, 40), 0.4731, group="row")
    for row in range(12):
        assert scores[row][~mask[row]].max() <= scores[row][mask[row]].min()
    with pytest.raises(MaskError, match="rows"):
        verify_mask(mask.flip(0), (12, 40), 0.4731, group="row")     # the extra weight in the wrong rows


def test_masks_match_a_stable_sort_with_ties():
    scores = torch.randint(0, 4, (6, 32), generator=torch.Generator().manual_seed(3)).float()
    mask = scores_to_mask(scores, 0.5, group="row")
    order = torch.sort(scores, dim=1, stable=True).indices[:, :16]
    assert torch.equal(mask, torch.ones_like(mask).scatter_(1, order, False))


def test_row_group_prunes_the_lowest_scores_of_each_row(scores):
    mask = scores_to_mask(scores, 0.5, group="row")
    for row in range(12):
        assert scores[row][~mask[row]].max() <= scores[row][mask[row]].min()


def test_layer_group_prunes_exactly_and_lowest_globally(scores):
    mask = scores_to_mask(scores, 0.37, group="layer")
    assert int((~mask).sum()) == round(12 * 40 * 0.37)
    assert scores[~mask].max() <= scores[mask].min()
    verify_mask(mask, (12, 40), 0.37, group="layer")


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_n_m_keeps_n_in_every_group_of_m(scores, text, n, m):
    pattern = SparsityPattern.parse(text)
    mask = scores_to_mask(scores, 0.5, pattern=pattern)
    assert (mask.reshape(12, 40 // m, m).sum(-1) == n).all()
    verify_mask(mask, (12, 40), 0.5, pattern=pattern)
    assert mask_sparsity(mask) == pytest.approx(0.5)


def test_verify_rejects_wrong_count_shape_and_dtype(scores):
    mask = scores_to_mask(scores, 0.5, group="row")
    with pytest.raises(MaskError, match="pruned"):
        verify_mask(mask, (12, 40), 0.4, group="row")
    with pytest.raises(MaskError, match="shape"):
        verify_mask(mask, (40, 12), 0.5, group="row")
    with pytest.raises(MaskError, match="dtype"):
        verify_mask(mask.float(), (12, 40), 0.5, group="row")


def test_verify_rejects_unbalanced_rows_and_broken_n_m():
    # Right total (16 of 4x8) but row 0 prunes all 8 and row 1 none.
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[0] = False
    mask[2, :4] = False
    mask[3, :4] = False
    verify_mask(mask, (4, 8), 0.5, group="layer")
    with pytest.raises(MaskError, match="rows"):
        verify_mask(mask, (4, 8), 0.5, group="row")
    # Right count per row (4 of 8) but 4 pruned in one group of 4: not 2:4.
    with pytest.raises(MaskError, match="pattern"):
        verify_mask(mask.clone().fill_(True).index_fill_(1, torch.arange(4), False), (4, 8), 0.5,
                    pattern=SparsityPattern(2, 4))


def test_pattern_that_does_not_divide_the_layer_is_a_bad_input():
    with pytest.raises(BadInputError, match="multiple of 8"):
        scores_to_mask(torch.randn(4, 12), 0.5, pattern=SparsityPattern(4, 8))
    with pytest.raises(BadInputError):
        SparsityPattern.parse("4:2")


def test_non_finite_scores_are_rejected():
    scores = torch.randn(4, 8)
    scores[0, 0] = float("nan")
    with pytest.raises(MaskError, match="NaN"):
        scores_to_mask(scores, 0.5)


@pytest.mark.parametrize("shape", [(3, 5), (8, 8), (7, 13)])
def test_pack_unpack_roundtrip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(2)) > 0.5
    packed = pack_mask(mask)
    assert len(packed) == (shape[0] * shape[1] + 7) // 8
    assert torch.equal(unpack_mask(packed, shape), mask)
    with pytest.raises(MaskError, match="bytes"):
        unpack_mask(packed + b"\0", shape)
