"""Measured evidence: what one ingredient of a metric does, from paired comparisons in the archive.

Two verified candidates whose metrics differ in ONE ingredient (a statistic, a transform
family, a depth term, the weight term's power, a normalisation, the ranking group) are a
natural experiment: their per-window validation NLLs (`record["nll"][level]`) on the same
windows differ only through that ingredient. Level i's windows are the first `levels[i]`
windows of one list, so two candidates always share the first min(n_a, n_b) windows.

An effect is the mean paired NLL difference (with the ingredient minus without, or the
second option minus the first for a swap) over every such pair, with a 95 % bootstrap
interval that resamples pairs and, within each pair, windows. The direction of a finding
(supports / refutes / inconclusive) is decided here, from that interval, never by an LLM.
Ingredients come from the parsed expression (agent/expression.py's checked tree, read
only); a whole program contributes the ingredients its `score` function's AST shows.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from autoprune.agent.expression import EVERY_FIELD, CandidateFormatError, expression_of, validate_expression
from autoprune.agent.fitness import perplexity_of
from autoprune.pruning import contract
from autoprune.sandbox.parser_lock import parse as parse_python

BOOTSTRAP_DRAWS = 2000
CONFIDENCE = 0.95
CHANNEL_STATS = frozenset(contract.CHANNEL_NAMES) | {"grad", "gram"}
DEPTH_FIELDS = frozenset({"layer_index", "num_layers"})
TRANSFORM_FAMILIES = {"sqrt": "sqrt", "rsqrt": "sqrt", "log": "log", "log1p": "log", "log2": "log", "log10": "log",
                      "exp": "exp", "expm1": "exp", "exp2": "exp", "square": "power", "pow": "power",
                      "tanh": "squash", "sigmoid": "squash", "atan": "squash", "erf": "squash",
                      "clamp": "clamp", "clamp_min": "clamp", "clamp_max": "clamp", "reciprocal": "reciprocal"}
NORMALISERS = frozenset({"mean", "sum", "amax", "max", "median", "std", "norm"})


@dataclass(frozen=True)
class Ingredient:
    """One ingredient: `kind` (stat | transform | depth | weight | normalise | group) and its value."""

    kind: str
    value: str

    def label(self) -> str:
        return {"stat": f"X.{self.value}", "transform": f"{self.value} transform", "depth": "a depth term",
                "weight": f"weight term {self.value}", "normalise": "normalising by a layer statistic",
                "group": f"{self.value}-wise ranking", "form": "a whole program"}.get(self.kind, self.value)


def ingredients(source: str) -> Optional[frozenset[Ingredient]]:
    """The ingredients of a candidate's source (one-line expression or whole program); None if unreadable."""
    expression = expression_of(source)
    group = Ingredient("group", "layer") if 'GROUP = "layer"' in source or "GROUP = 'layer'" in source else None
    try:
        tree: ast.AST = (validate_expression(expression, EVERY_FIELD) if expression
                         else _score_function(parse_python(source)))
    except (CandidateFormatError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if tree is None:
        return None
    found = set(_ingredients_of(tree)) | ({group} if group else set())
    if not expression:      # a whole program pairs only with programs: its ingredients are read less exactly
        found.add(Ingredient("form", "program"))
    return frozenset(found)


def _score_function(module: ast.Module) -> Optional[ast.AST]:
    return next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "score"), None)


def _ingredients_of(tree: ast.AST) -> Iterable[Ingredient]:
    powered = {id(n.func.value if isinstance(n, ast.Call) else n.left) for n in ast.walk(tree)
               if _weight_power(n) is not None}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "X":
            if node.attr in CHANNEL_STATS:
                yield Ingredient("stat", node.attr)
            elif node.attr in DEPTH_FIELDS:
                yield Ingredient("depth", "layer")
        power = _weight_power(node)
        if power is not None:
            yield Ingredient("weight", power)
        elif _is_abs_w(node) and id(node) not in powered:
            yield Ingredient("weight", "|W|^1")
        name = _called_name(node)
        if name in TRANSFORM_FAMILIES and power is None:
            yield Ingredient("transform", TRANSFORM_FAMILIES[name])
        if name in NORMALISERS and isinstance(node, ast.Call) and _divides(tree, node):
            yield Ingredient("normalise", "layer")


def _called_name(node: ast.AST) -> Optional[str]:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _divides(tree: ast.AST, call: ast.Call) -> bool:
    """`call` (a reduction such as `.mean()`) is inside the denominator of a division."""
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and any(m is call for m in ast.walk(n.right))
               for n in ast.walk(tree))


def _is_w(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "W"


def _is_abs_w(node: ast.AST) -> bool:
    """`W.abs()`, `torch.abs(W)` or `abs(W)`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "abs":
        on_module = isinstance(func.value, ast.Name) and func.value.id == "torch"
        return _is_w(node.args[0]) if on_module and node.args else _is_w(func.value)
    return isinstance(func, ast.Name) and func.id == "abs" and bool(node.args) and _is_w(node.args[0])


def _weight_power(node: ast.AST) -> Optional[str]:
    """"|W|^k" for a power of W or of |W| (W.pow(2), W ** 2, W.abs().pow(1.5)), else None."""
    base, exponent = None, None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = node.left, node.right
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "pow" and node.args:
        base, exponent = node.func.value, node.args[0]
    if (base is not None and (_is_w(base) or _is_abs_w(base)) and isinstance(exponent, ast.Constant)
            and isinstance(exponent.value, (int, float))):
        return f"|W|^{float(exponent.value):g}"
    return None


@dataclass(frozen=True)
class Change:
    """What separates two candidates: one ingredient present or not, or one swapped for another."""

    kind: str
    without: str        # "" for presence (the ingredient is absent in the first arm)
    with_: str

    def label(self) -> str:
        if not self.without:
            return f"adding {self.with_}"
        return f"{self.without} -> {self.with_}"


def one_change(a: frozenset[Ingredient], b: frozenset[Ingredient]) -> Optional[tuple[Change, int]]:
    """The single change from `a` to `b` and its orientation (+1: b is the "with" arm, -1: a is),
    or None when they differ in none or in more than one ingredient."""
    only_a, only_b = a - b, b - a
    if len(only_a) + len(only_b) == 1:
        (ing,), sign = (tuple(only_b), 1) if only_b else (tuple(only_a), -1)
        return Change(ing.kind, "", ing.label()), sign
    if len(only_a) == 1 and len(only_b) == 1:
        (x,), (y,) = tuple(only_a), tuple(only_b)
        if x.kind == y.kind:
            first, second = sorted((x.label(), y.label()))
            return Change(x.kind, first, second), (1 if y.label() == second else -1)
    return None


def paired_differences(with_nll: Sequence[float], without_nll: Sequence[float]) -> np.ndarray:
    """Per-window NLL(with) - NLL(without) on their common (first) windows; negative = the change helps."""
    n = min(len(with_nll), len(without_nll))
    return np.asarray(with_nll[:n], dtype=float) - np.asarray(without_nll[:n], dtype=float)


def longest_nll(record: Mapping) -> list[float]:
    """The record's NLLs at its highest level (a prefix-superset of every lower level's)."""
    nll = record.get("nll") or {}
    levels = [k for k, v in nll.items() if isinstance(v, list) and v]
    return list(nll[max(levels, key=int)]) if levels else []


@dataclass(frozen=True)
class Effect:
    mean: float              # mean paired NLL difference (with - without)
    low: float               # 95 % bootstrap interval
    high: float
    pairs: int
    windows: int             # paired windows in all

    @property
    def relation(self) -> str:
        """supports "the change lowers NLL" when the whole interval is below 0, refutes when above."""
        return "supports" if self.high < 0 else "refutes" if self.low > 0 else "inconclusive"

    @property
    def ppl_change_pct(self) -> float:
        return 100.0 * math.expm1(self.mean)


def effect_of(differences: Sequence[np.ndarray], *, seed: int = 0, draws: int = BOOTSTRAP_DRAWS) -> Effect:
    """Mean of the pairs' mean differences, with a bootstrap over pairs and over windows inside each pair."""
    diffs = [np.asarray(d, dtype=float) for d in differences if len(d)]
    if not diffs:
        raise ValueError("no paired windows")
    rng = np.random.default_rng(seed)
    # (pairs, draws): each pair's mean over its windows resampled with replacement, per draw.
    inner = np.stack([d[rng.integers(0, len(d), size=(draws, len(d)))].mean(axis=1) for d in diffs])
    chosen = rng.integers(0, len(diffs), size=(draws, len(diffs)))
    boot = inner[chosen, np.arange(draws)[:, None]].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    mean = float(np.mean([d.mean() for d in diffs]))
    return Effect(mean, float(low), float(high), len(diffs), int(sum(len(d) for d in diffs)))


@dataclass(frozen=True)
class Finding:
    """A measured insight: the change, its effect, and the candidate pairs behind it."""

    change: Change
    effect: Effect
    examples: tuple[tuple[str, str], ...]       # (with id, without id), at most a few

    @property
    def name(self) -> str:
        return self.change.label()

    def statement(self) -> str:
        e = self.effect
        return (f"{self.name}: paired NLL difference {e.mean:+.4f} (95% CI {e.low:+.4f} to {e.high:+.4f}; "
                f"perplexity {e.ppl_change_pct:+.1f}%) over {e.pairs} pair(s), {e.windows} windows")

    def to_dict(self) -> dict:
        e = self.effect
        return {"name": self.name, "kind": self.change.kind, "relation": e.relation, "mean_nll_diff": round(e.mean, 6),
                "ci_low": round(e.low, 6), "ci_high": round(e.high, 6), "ppl_change_pct": round(e.ppl_change_pct, 3),
                "pairs": e.pairs, "windows": e.windows, "examples": [list(p) for p in self.examples]}


def measured_findings(candidates: Mapping[str, Mapping], sources: Mapping[str, str], *,
                      min_windows: int = 2) -> list[Finding]:
    """Every single-ingredient change the verified candidates measured, strongest evidence first.
    `sources`: candidate id -> its source (ingredients are read from it, never run)."""
    parsed = {}
    for cid, rec in candidates.items():
        nll = longest_nll(rec)
        parts = ingredients(sources[cid]) if rec.get("status") == "ok" and nll and cid in sources else None
        if parts is not None:
            parsed[cid] = (parts, nll)
    grouped: dict[Change, list[tuple[str, str, np.ndarray]]] = {}
    ids = sorted(parsed)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            found = one_change(parsed[a][0], parsed[b][0])
            if found is None:
                continue
            change, sign = found
            with_id, without_id = (b, a) if sign > 0 else (a, b)
            diff = paired_differences(parsed[with_id][1], parsed[without_id][1])
            if len(diff) >= min_windows:
                grouped.setdefault(change, []).append((with_id, without_id, diff))
    findings = [Finding(change, effect_of([d for _, _, d in pairs]), tuple((w, o) for w, o, _ in pairs[:3]))
                for change, pairs in grouped.items()]
    return sorted(findings, key=lambda f: (f.effect.relation == "inconclusive", -abs(f.effect.mean), f.name))


def versus_reference(record: Mapping, reference: Mapping) -> Optional[Effect]:
    """The paired effect of a candidate against a reference (Wanda) on their common windows."""
    diff = paired_differences(longest_nll(record), longest_nll(reference))
    return effect_of([diff]) if len(diff) >= 2 else None


def comparable_ranking(candidates: Mapping[str, Mapping], ids: Sequence[str], *,
                       min_entries: int = 3) -> tuple[int, list[tuple[str, float]]]:
    """(n, [(id, perplexity on the first n validation windows)] best first): only numbers measured on the
    same windows are ranked together (58.03 on 32 windows never above 49.19 on 8). n is the most windows
    that at least `min_entries` of `ids` share; those measured on fewer windows are left out."""
    measured = [(cid, longest_nll(candidates[cid])) for cid in ids if cid in candidates]
    measured = [(cid, nll) for cid, nll in measured if nll]
    if not measured:
        return 0, []
    want = min(min_entries, len(measured))
    n = next(c for c in sorted({len(nll) for _, nll in measured}, reverse=True)
             if sum(len(nll) >= c for _, nll in measured) >= want)
    ranked = [(cid, perplexity_of(nll[:n])) for cid, nll in measured if len(nll) >= n]
    return n, sorted(ranked, key=lambda pair: (pair[1], pair[0]))
