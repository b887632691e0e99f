"""The candidate contract, stated once: the kinds of candidate and what they receive.

A candidate is one Python file defining exactly one function of `KINDS`: `score(W, X)`
(importance of every weight; trusted code builds the mask) or `prune(W, X, sparsity,
pattern)` (the keep-mask of the layer itself, by any algorithm). Either way it gets W, the
weights of one linear layer (float32, (out, in)), and X, an `ActivationStats` of that layer's
calibration inputs, and either way it only chooses a mask: trusted code verifies it and
refits the surviving weights. `KINDS` drives the gate and the worker (sandbox/gate.py,
sandbox/worker.py), code extraction and the prompts. `STATISTICS` below is the ONE
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
from typing import Collection, Iterable, Literal, Optional

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


# What a run collected, as `available`'s flags, by the `Need` that each flag switches on.
FLAGS = {"hessian": "has_hessian", "gram": "has_gram", "grad": "has_grad"}


def offered_by(fields_per_layer: Iterable[Collection[str]]) -> dict[str, bool]:
    """`available`'s flags from the X fields each layer of a bundle carries: a need is met
    when every layer carries every field that needs it (no layers: nothing is offered)."""
    layers = [set(fields) for fields in fields_per_layer]
    return {flag: bool(layers) and all({s.name for s in STATISTICS if s.needs == need} <= have
                                       for have in layers)
            for need, flag in FLAGS.items()}


def not_offered(names: Iterable[str], **offered: bool) -> tuple[str, ...]:
    """The X fields among `names` (attribute names a candidate reads) the run did not collect."""
    have = {s.name for s in available(**offered)}
    return tuple(sorted({n for n in names if n in BY_NAME and n not in have}))


def not_offered_message(missing: Iterable[str], **offered: bool) -> str:
    """The one refusal for reading uncollected fields (expression checker and program gate alike)."""
    fields = ", ".join(f"X.{n}" for n in sorted(s.name for s in available(**offered)))
    return (f"this run did not collect {', '.join(f'`X.{n}`' for n in missing)}; the fields are "
            f"{fields}")


# ---- the kinds of candidate ---------------------------------------------------------------------

@dataclass(frozen=True)
class CandidateKind:
    """One kind of candidate: the one function its file defines, and what comes back.

    `group`: how its mask is verified when the file declares no `GROUP` ("row": every row prunes
    its share; "layer": the layer total is exact); N:M patterns are checked either way."""

    name: str
    params: tuple[str, ...]
    brief: str             # what it returns, in a few words (repair hints)
    returns: str           # the same in full (prompts)
    group: str

    @property
    def signature(self) -> str:
        return f"def {self.name}({', '.join(self.params)})"


SCORE = CandidateKind("score", ("W", "X"), "a tensor shaped like W (higher = keep)",
                      "a float tensor shaped like W: the importance of every weight, higher = keep; "
                      "trusted code keeps the highest-scoring ones", "row")
PRUNE = CandidateKind("prune", ("W", "X", "sparsity", "pattern"), "the bool keep-mask of the layer",
                      "the keep-mask of the layer itself: a bool tensor shaped like W (True = keep), "
                      "chosen by any algorithm, iterative ones included; return the mask only", "layer")
KINDS: tuple[CandidateKind, ...] = (SCORE, PRUNE)
KIND_BY_NAME = {kind.name: kind for kind in KINDS}
# What `prune` receives besides W and X, as (name, meaning).
PRUNE_ARGUMENTS = (
    ("sparsity", "a float in [0, 1): the fraction of the layer's weights to prune; exactly "
                 "round(out·in·sparsity) of them must be False in the mask"),
    ("pattern", 'None (unstructured) or a dict {"n": N, "m": M}: keep exactly N of every M '
                "consecutive weights of each row (then sparsity is 1 - N/M)"),
)


def pattern_argument(n: int, m: int) -> Optional[dict[str, int]]:
    """`prune`'s `pattern`: None for unstructured, else a fresh {"n": N, "m": M}."""
    return {"n": int(n), "m": int(m)} if m else None


def kind_lines(**offered: bool) -> str:
    """The kinds as prompt bullets; `offered`: `available`'s flags (XᵀX helps a mask program)."""
    lines = [f"- A candidate is one Python file defining exactly one of {len(KINDS)} functions:"]
    lines += [f"  `{kind.signature}` returns {kind.returns}." for kind in KINDS]
    lines += [f"  In prune, {name} is {meaning}." for name, meaning in PRUNE_ARGUMENTS]
    gram = ("X.gram (XᵀX) gives it the layer's whole output error (OBS sweeps, ADMM). "
            if "gram" in {s.name for s in available(**offered)} else "")
    lines.append(f"  Either way a candidate only chooses the mask: trusted code refits the kept weights "
                 f"for it, so a prune program may update its own copy of W while it decides. {gram}"
                 f"Nothing is kept from one layer to the next.")
    return "\n".join(lines)


def _x(names) -> str:
    return ", ".join(f"X.{n}" for n in names)


def bullet_lines(**offered: bool) -> str:
    """The contract as prompt bullets (what `{{ contract }}` renders to); `offered`: `available`'s flags."""
    specs = available(**offered)
    lines = [kind_lines(**offered), f"- W: {W_SPEC[2]}, shape {W_SPEC[1]}."]
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
