"""One-shot refit of a masked model: every kept weight refitted for its mask with the DENSE
calibration Hessians, swapped in for the duration of a block (search-time fitness, the finale).

API (for any trusted caller, e.g. the agent's fitness service and finale):

    factors = HessianFactors.from_stats(stats)          # stats: collect_activation_stats(..., with_gram=True)
    with refitted(model, masks, factors, "obs"):         # "none" | "obs" | "exact"
        ...                                              # the masked, refitted model
    # the dense weights are back here, also after an exception

    weights = refit_weights(model, masks, factors, "exact")   # the refitted (out, in) weights themselves

The per-input work does not depend on the mask: the OBS sweep's Cholesky factor of
(XᵀX + δI)⁻¹ and the exact refit's unit-diagonal Hessian (with its inverse, the CG
preconditioner) are computed once per layer INPUT
(q/k/v share one XᵀX object, gate/up another: `calibration.SharedInputs`) on first use and reused
for every later mask, so one candidate's OBS refit costs about rows × in² per layer (the sweep)
and its exact refit a few dozen products of that size (benchmarks/results/refit_speed.md).
Unlike the sequential loop (`loop.prune_model` with `reconstruct`), every block sees the dense
model's inputs: cheaper, one pass, no forward passes; an approximation of what the sequential
refit gives (benchmarks/results/fitness_levels.md measures how good).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from autoprune.adapters import linear_weight
from autoprune.errors import BadInputError
from autoprune.pruning.apply import masks_applied, weights_applied
from autoprune.pruning.choices import reconstruction_name
from autoprune.pruning.reconstruct import exact_refit, unit_hessian
from autoprune.pruning.sparsegpt import DAMP, ObsFactor
from autoprune.pruning.stats import ActivationStats


class HessianFactors:
    """The dense XᵀX of every target linear and their mask-independent factors, one per distinct
    layer input (layers holding the same XᵀX tensor object share it), computed on first use."""

    def __init__(self, grams: Mapping[str, Tensor], *, damp: float = DAMP):
        self.grams, self.damp = dict(grams), damp
        first: dict[int, str] = {}
        self.owner = {name: first.setdefault(id(g), name) for name, g in self.grams.items()}
        self._obs: dict[tuple[str, str], ObsFactor] = {}
        self._unit: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_stats(cls, stats: Mapping[str, ActivationStats], *, damp: float = DAMP) -> "HessianFactors":
        missing = [name for name, s in stats.items() if s.gram is None]
        if missing:
            raise BadInputError(f"a refit needs XᵀX of every layer; calibrate with_gram=True ({missing[0]} lacks it)")
        return cls({name: s.gram for name, s in stats.items()}, damp=damp)

    @property
    def num_inputs(self) -> int:
        return len(set(self.owner.values()))

    def obs(self, name: str, device) -> ObsFactor:
        key = (self.owner[name], str(device))
        if key not in self._obs:
            self._obs[key] = ObsFactor.of(self.grams[key[0]], self.damp).to(device)
        return self._obs[key]

    def unit(self, name: str, device) -> tuple[Tensor, Tensor]:
        key = (self.owner[name], str(device))
        if key not in self._unit:
            self._unit[key] = tuple(t.to(device) for t in unit_hessian(self.grams[key[0]], self.damp))
        return self._unit[key]


def refit_layer(W: Tensor, mask: Tensor, factors: HessianFactors, name: str, kind: str) -> Tensor:
    """The weights of layer `name` for `mask` (exactly zero where it prunes), float32 (out, in)."""
    from autoprune.pruning.sparsegpt import reconstruct

    W = W.detach().to(torch.float32)
    if kind == "none":
        return W * mask.to(device=W.device, dtype=W.dtype)
    obs = reconstruct(W, mask, factor=factors.obs(name, W.device))
    if kind == "obs":
        return obs
    return exact_refit(W, mask, start=obs, unit=factors.unit(name, W.device))


def refit_weights(model: nn.Module, masks: Mapping[str, Tensor], factors: HessianFactors,
                  kind: str = "obs") -> dict[str, Tensor]:
    """{name: refitted (out, in) weight} for every masked layer, from the model's current (dense)
    weights; the model is not changed."""
    kind = reconstruction_name(kind)
    out = {}
    for name, mask in masks.items():
        if name not in factors.owner:
            raise BadInputError(f"no XᵀX for {name}: the refit needs the calibration of every masked layer")
        out[name] = refit_layer(linear_weight(model.get_submodule(name)), mask, factors, name, kind)
    return out


@contextmanager
def refitted(model: nn.Module, masks: Mapping[str, Tensor], factors: HessianFactors,
             kind: str = "obs") -> Iterator[None]:
    """The masked model with its kept weights refitted (`kind`: none | obs | exact) for the block;
    the dense weights come back afterwards, also on errors. `kind="none"` only applies the masks."""
    if reconstruction_name(kind) == "none":
        with masks_applied(model, masks):
            yield
        return
    with weights_applied(model, refit_weights(model, masks, factors, kind)):
        yield
