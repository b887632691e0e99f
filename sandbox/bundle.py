"""The scoring bundle: the read-only inputs every candidate of a run scores.

Written once per run (weights of the target linears, their calibration
statistics and a manifest), then mounted read-only into each container. The
layout is the contract with `autoprune.sandbox.worker`:

    weights.safetensors   {layer name: (out_features, in_features) float32}
    stats.safetensors     ActivationStats.to_tensors(prefix=layer name) for every layer,
                          the contract's (in, in) fields (X.gram) only when asked for; a
                          tensor several layers share (linears reading one input share
                          XᵀX and what derives from it) is stored once
    manifest.json         {"version": 1, "layers": [{name, short_name, layer_index,
                           num_layers, shape, group, nsamples}],
                           "aliases": {key: the stored key holding that tensor}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from autoprune.adapters import adapter_for, linear_weight
from autoprune.errors import BadInputError
from autoprune.pruning import contract
from autoprune.pruning.contract import bundled_tensors
from autoprune.pruning.stats import ActivationStats

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
STATS = "stats.safetensors"
BUNDLE_VERSION = 1


@dataclass(frozen=True)
class LayerSpec:
    name: str             # full module name, e.g. "model.layers.3.self_attn.q_proj"
    short_name: str       # "q_proj": what candidates see in X.name
    layer_index: int
    num_layers: int
    shape: tuple[int, int]
    group: str            # the sub-module holding it: "self_attn", "mlp", ...
    nsamples: int = 0

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class ScoringBundle:
    folder: Path
    layers: tuple[LayerSpec, ...]
    # stats key -> the stored key (shared tensors); derived from the files, so not in eq/hash
    aliases: dict = field(default_factory=dict, compare=False)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise BadInputError(f"layer {name!r} is not in the scoring bundle at {self.folder}")

    def offered(self) -> dict[str, bool]:
        """What the bundle carries for every layer, as `contract.available`'s flags: what the
        static gate lets a candidate read (`check_source(source, offered=bundle.offered())`)."""
        with safe_open(str(self.folder / STATS), "pt") as stats_file:
            keys = set(stats_file.keys()) | set(self.aliases)
        return contract.offered_by({field for field in contract.TENSOR_NAMES if f"{spec.name}.{field}" in keys}
                                   for spec in self.layers)

    def packed_mask_bytes(self) -> int:
        """Bytes of the bit-packed masks of every layer: sizes the output cap."""
        return sum((spec.numel + 7) // 8 for spec in self.layers)

    @classmethod
    def open(cls, folder: str | Path) -> "ScoringBundle":
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{folder} is not a scoring bundle ({exc})") from exc
        layers = tuple(LayerSpec(**{**item, "shape": tuple(item["shape"])})
                       for item in manifest["layers"])
        return cls(folder=folder, layers=layers, aliases=dict(manifest.get("aliases", {})))


def _layer_specs(model, stats: dict[str, ActivationStats]):
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    for index, block in enumerate(blocks):
        for dotted, module in adapter.linears(block).items():
            name = f"{adapter.blocks_path}.{index}.{dotted}"
            if name not in stats:
                raise BadInputError(f"no calibration statistics for {name}; "
                                    "collect them for every target linear first")
            weight = linear_weight(module).detach()
            group = dotted.rsplit(".", 1)[0] if "." in dotted else ""
            spec = LayerSpec(name=name, short_name=adapter.short_name(dotted), layer_index=index,
                             num_layers=len(blocks), shape=tuple(weight.shape), group=group,
                             nsamples=int(stats[name].nsamples))
            yield spec, weight


def write_scoring_bundle(model, stats: dict[str, ActivationStats], folder: str | Path, *,
                         with_gram: bool = False) -> ScoringBundle:
    """Write the bundle for `model`'s target linears into `folder` (created if needed).

    Lean by default: X.gram (in × in per layer) is written only `with_gram` (programs that
    need XᵀX itself, such as the mask-program seeds; `gate.needs_of(source)` says whether a
    candidate does); X.hinv_diag, computed from it at calibration, is always carried.
    `ScoringBundle.offered()` then tells the gate what candidates may read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, stat_tensors, specs, aliases = {}, {}, [], {}
    stored: dict[int, str] = {}          # id of a host tensor -> the key it is stored under
    carried = bundled_tensors(with_gram=with_gram)
    for spec, weight in _layer_specs(model, stats):
        weights[spec.name] = weight.to(torch.float32).contiguous().clone()
        for k in carried:
            tensor = getattr(stats[spec.name], k)
            if tensor is None:
                continue
            key = f"{spec.name}.{k}"
            if id(tensor) in stored:
                aliases[key] = stored[id(tensor)]
                continue
            stored[id(tensor)] = key
            stat_tensors[key] = tensor.to(torch.float32).contiguous().clone()
        specs.append(spec)
    save_file(weights, str(folder / WEIGHTS))
    save_file(stat_tensors, str(folder / STATS))
    manifest = {"version": BUNDLE_VERSION, "aliases": aliases,
                "layers": [{**spec.__dict__, "shape": list(spec.shape)} for spec in specs]}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    # The container's non-root user reads the bundle through a read-only bind mount.
    os.chmod(folder, 0o755)
    for name in (WEIGHTS, STATS, MANIFEST):
        os.chmod(folder / name, 0o644)
    return ScoringBundle(folder=folder, layers=tuple(specs), aliases=aliases)
