"""The candidate contract, stated once: what `score(W, X)` receives.

A candidate metric gets W, the weights of one linear layer (float32, (out, in)), and X,
an `ActivationStats` of that layer's calibration inputs. `STATISTICS` below is the ONE
list of X's fields; everything else derives from it: `ActivationStats` (checked by
tests/test_contract.py), the sandbox's attribute allow-list (sandbox/policy.py), the
expression grammar and hints (agent/expression.py, agent/codegen.py), the prompts'
`{{ contract }}` context (prompts/registry.py), the rank-equivalence atoms
(agent/rank_equivalence.py) and the statistics mutation swaps (agent/mutation.py).
Adding a statistic = one entry here + its computation in autoprune/pruning/calibration.py.

Imported inside the sandbox image: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

# What the run must collect for a field to exist: None, always there; "hessian": calibration
# derives fields from XᵀX (`collect_activation_stats(with_hessian=True)`; O(in) per layer);
# "gram": XᵀX itself is carried ((in, in) per layer: only for programs that need it, the
# bundle's `with_gram`); "grad": a backward pass (`with_grad`).
Need = Optional[Literal["hessian", "gram", "grad"]]
# What ranking may assume about a field (agent/rank_equivalence.py):
#   "positive-constant": > 0 and one value per layer;  "constant": >= 0, one value per layer;
#   "positive" / "nonnegative": elementwise;  "any": no sign known.
Sign = Literal["positive-constant", "constant", "positive", "nonnegative", "any"]
CHANNEL, SQUARE, WEIGHT, INTEGER, TEXT = "(in,)", "(in, in)", "(out, in)", "int", "str"

W_SPEC = ("W", WEIGHT, "weights of the linear layer, float32")


@dataclass(frozen=True)
class StatisticSpec:
    """One field of X.

    `needs`: what the run must collect and carry for the field to exist (see `Need`). `identity`:
    the field as an exact product of other fields' powers ((name, exponent), ...), which
    rank-equivalence rewrites it into. `units`: the physical unit of the values (mutation
    adds two statistics as they are only when their units agree)."""

    name: str
    shape: str
    meaning: str
    needs: Need = None
    sign: Sign = "any"
    identity: tuple[tuple[str, float], ...] = ()
    units: str = ""

    @property
    def is_tensor(self) -> bool:
        return self.shape not in (INTEGER, TEXT)

    @property
    def is_channel(self) -> bool:
        """Per input channel (in,): broadcasts over the rows of W."""
        return self.shape == CHANNEL


STATISTICS: tuple[StatisticSpec, ...] = (
    StatisticSpec("norm", CHANNEL, "‖X_j‖₂ over all calibration tokens", sign="nonnegative",
                  identity=(("nsamples", 0.5), ("sq_mean", 0.5)), units="x·√tokens"),
    StatisticSpec("sq_mean", CHANNEL, "mean of X_j²", sign="nonnegative", units="x²"),
    StatisticSpec("mean", CHANNEL, "mean of X_j (can be negative)", units="x"),
    StatisticSpec("var", CHANNEL, "variance of X_j", sign="nonnegative", units="x²"),
    StatisticSpec("max_abs", CHANNEL, "max |X_j|", sign="nonnegative", units="x"),
    StatisticSpec("hess_diag", CHANNEL, "diagonal of XᵀX (Σ X_j², the OBS Hessian's diagonal)",
                  sign="nonnegative", identity=(("nsamples", 1.0), ("sq_mean", 1.0)), units="x²·tokens"),
    StatisticSpec("hinv_diag", CHANNEL, "diagonal of (XᵀX + λI)⁻¹, λ = 0.01·mean diag (SparseGPT's "
                  "damping); OBS saliency is W**2 / X.hinv_diag", needs="hessian", sign="positive",
                  units="1/(x²·tokens)"),
    StatisticSpec("gram", SQUARE, "XᵀX", needs="gram", units="x²·tokens"),
    StatisticSpec("grad", WEIGHT, "per-weight gradient magnitude of the LM loss", needs="grad",
                  sign="nonnegative", units="loss/w"),
    StatisticSpec("layer_index", INTEGER, "index of the decoder block of this layer, from 0", sign="constant"),
    StatisticSpec("num_layers", INTEGER, "number of decoder blocks", sign="positive-constant"),
    StatisticSpec("in_features", INTEGER, "number of input channels (in)", sign="positive-constant"),
    StatisticSpec("nsamples", INTEGER, "number of calibration tokens", sign="positive-constant"),
    StatisticSpec("name", TEXT, 'short name of the linear, e.g. "q_proj", "down_proj", "fc1"'),
)
BY_NAME = {spec.name: spec for spec in STATISTICS}
NAMES = tuple(BY_NAME)
TENSOR_NAMES = tuple(s.name for s in STATISTICS if s.is_tensor)
CHANNEL_NAMES = tuple(s.name for s in STATISTICS if s.is_channel)
NUMBER_NAMES = tuple(s.name for s in STATISTICS if s.shape == INTEGER)


def available(*, has_hessian: bool = False, has_gram: bool = False,
              has_grad: bool = False) -> tuple[StatisticSpec, ...]:
    """The fields a run offers, given what it collected (`has_gram` implies `has_hessian`)."""
    have = {None} | {need for need, on in (("hessian", has_hessian or has_gram), ("gram", has_gram),
                                           ("grad", has_grad)) if on}
    return tuple(s for s in STATISTICS if s.needs in have)


def bundled_tensors(*, with_gram: bool) -> tuple[str, ...]:
    """Tensor fields a scoring bundle carries when present: `needs="gram"` ones only when asked."""
    return tuple(name for name in TENSOR_NAMES if with_gram or BY_NAME[name].needs != "gram")


def _x(names) -> str:
    return ", ".join(f"X.{n}" for n in names)


def bullet_lines(**offered: bool) -> str:
    """The contract as prompt bullets (what `{{ contract }}` renders to); `offered`: `available`'s flags."""
    specs = available(**offered)
    lines = [f"- W: {W_SPEC[2]}, shape {W_SPEC[1]}."]
    channel = [s for s in specs if s.is_channel]
    lines.append(f"- {_x(s.name for s in channel)}: statistics of the layer's inputs per input channel, "
                 f"shape (in,); they broadcast over the rows of W (W * X.norm has shape (out, in)).")
    lines += [f"  X.{s.name}: {s.meaning}." for s in channel]
    lines += [f"- X.{s.name}: {s.meaning}, shape {s.shape}." for s in specs
              if s.is_tensor and not s.is_channel]
    lines.append(f"- {_x(s.name for s in specs if s.shape == INTEGER)}: integers; "
                 f"X.name: {BY_NAME['name'].meaning}.")
    return "\n".join(lines)


def one_line(**offered: bool) -> str:
    """The contract in one sentence, for small models and repair hints; `offered`: `available`'s flags."""
    specs = available(**offered)
    channel = _x(s.name for s in specs if s.is_channel)
    others = "".join(f" X.{s.name} is {s.shape}." for s in specs if s.is_tensor and not s.is_channel)
    return (f"W is float32 {W_SPEC[1]}; {channel} are per input channel, shape (in,), and broadcast "
            f"over the rows of W;{others} {_x(NUMBER_NAMES)} are integers.")
