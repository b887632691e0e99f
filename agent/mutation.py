"""Trusted mutation of an expression the LLM repeated (genetic-programming style, as in Pruner-Zero).

The embedded 135M model mostly re-writes metrics already tested: in a budget-50 run 162 of
182 write_code replies were repeats, and the run stopped at its LLM call cap with 12
programs sent. Instead of asking again, a repeated expression is mutated by trusted code
into one not tested yet; the result is still an untrusted candidate (static gate, sandbox,
mask checks) and the trace says where it came from (`origin: "mutation"`, `parent`: the
candidate it repeated).

Single-point mutations of the expression tree, each changing the ranking of weights (a
row- or layer-constant factor or a monotone transform of the whole score would not; a
mutant that ranks like its parent is dropped, agent/rank_equivalence.py):
- swap an input statistic:   X.norm -> X.max_abs (the contract's nonnegative per-channel
                             statistics the run offers: `swap_fields`)
- blend in a second one:     X.sq_mean -> (X.sq_mean + X.var)
                             X.norm -> (X.norm / X.norm.mean() + X.max_abs / X.max_abs.mean())
- re-weight a statistic:     X.norm -> X.norm.pow(0.5)
- re-weight the weight term: W.abs() or W.pow(2) -> W.abs().pow(1.5)
Statistics in the same units are added as they are; others each over its layer mean:
X.norm grows with the number of calibration tokens and X.sq_mean does not, so their raw
sum is one of them (6 of 14 `duplicate` verdicts in benchmarks/results/agent_run_mutation.md
were such sums). When every single-point mutation was tested, two-point ones are tried.
"""

from __future__ import annotations

import ast
import copy
import random
from typing import Callable, Iterator, Optional

from autoprune.agent.expression import EVERY_FIELD, X_TENSOR_FIELDS, CandidateFormatError, validate_expression
from autoprune.agent.rank_equivalence import rank_signature
from autoprune.pruning import contract

POWERS = (0.5, 1.5, 2.0)
UNITS = {s.name: s.units for s in contract.STATISTICS}


def swap_fields(**offered: bool) -> tuple[str, ...]:
    """The statistics mutation swaps in: the per-channel ones the run offers (`contract.available`'s
    flags) that are never negative (never X.mean: sqrt of it is NaN)."""
    return tuple(s.name for s in contract.available(**offered)
                 if s.is_channel and s.sign in ("positive", "nonnegative"))


SWAP_FIELDS = swap_fields()


def _x_fields(tree: ast.AST) -> list[ast.Attribute]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "X" and n.attr in X_TENSOR_FIELDS]


def _weight_terms(tree: ast.AST) -> list[ast.expr]:
    """`W.abs()`, `torch.abs(W)`, `W.pow(k)`, `torch.pow(W, k)` and `W ** k` nodes."""
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) and _is_w(n.left):
            found.append(n)
        if not isinstance(n, ast.Call) or not isinstance(n.func, ast.Attribute) or n.func.attr not in ("abs", "pow"):
            continue
        on_module = isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"
        target = n.args[0] if on_module and n.args else n.func.value
        if _is_w(target):
            found.append(n)
    return found


def _is_w(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "W"


def _field(name: str) -> ast.expr:
    return ast.Attribute(value=ast.Name(id="X", ctx=ast.Load()), attr=name, ctx=ast.Load())


def _method(node: ast.expr, name: str, *args: float) -> ast.expr:
    return ast.Call(func=ast.Attribute(value=node, attr=name, ctx=ast.Load()),
                    args=[ast.Constant(a) for a in args], keywords=[])


def _pow(node: ast.expr, power: float) -> ast.expr:
    return _method(node, "pow", power)


def _relative(name: str) -> ast.expr:
    """X.<name> over its layer mean (X.var as a standard deviation, like the other statistics)."""
    stat = _method(_field(name), "sqrt") if name == "var" else _field(name)
    return ast.BinOp(left=stat, op=ast.Div(), right=_method(copy.deepcopy(stat), "mean"))


def _replacements(tree: ast.Expression, fields: tuple[str, ...]) -> Iterator[tuple[ast.AST, ast.expr]]:
    """(node, replacement) pairs: every single-point mutation of the tree, swapping in `fields`."""
    for node in _x_fields(tree):
        for other in fields:
            if other == node.attr:
                continue
            yield node, _field(other)
            yield node, _blend(node.attr, other)
        for power in POWERS:
            yield node, _pow(_field(node.attr), power)
    for node in _weight_terms(tree):
        for power in POWERS:
            yield node, _pow(_method(ast.Name(id="W", ctx=ast.Load()), "abs"), power)


def _blend(name: str, other: str) -> ast.expr:
    """X.<name> + X.<other> when both are in the same units, else each over its layer mean."""
    if UNITS[name] == UNITS[other]:
        return ast.BinOp(left=_field(name), op=ast.Add(), right=_field(other))
    return ast.BinOp(left=_relative(name), op=ast.Add(), right=_relative(other))


class _Swap(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.expr):
        self.target, self.replacement = target, replacement

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return self.replacement
        return super().visit(node)


def mutations(expression: str, fields: tuple[str, ...] = SWAP_FIELDS) -> list[str]:
    """Single-point mutations of `expression` that pass the expression check, one per ranking of weights.
    The grammar is checked against every field: a mutant names only the parent's fields and `fields`."""
    tree = validate_expression(expression, EVERY_FIELD)
    rankings = {rank_signature(expression)}
    out: list[str] = []
    for target, replacement in _replacements(tree, fields):
        index = list(ast.walk(tree)).index(target)
        clone = copy.deepcopy(tree)
        mutated = _Swap(list(ast.walk(clone))[index], replacement).visit(clone)
        text = ast.unparse(ast.fix_missing_locations(mutated))
        try:
            validate_expression(text, EVERY_FIELD)
        except CandidateFormatError:
            continue
        if rank_signature(text) not in rankings:
            rankings.add(rank_signature(text))
            out.append(text)
    return out


def untested_mutation(expression: str, is_new: Callable[[str], bool], rng: random.Random,
                      depth: int = 2, fields: tuple[str, ...] = SWAP_FIELDS,
                      prefer: Optional[Callable[[str], bool]] = None) -> Optional[str]:
    """A random mutation for which `is_new(mutated_expression)` holds, or None: single-point ones
    first; when all of those were tested, a mutation of one of them (up to `depth` points).
    `prefer`: mutants it accepts come first (agent/population.py: those opening an empty cell)."""
    frontier = [expression]
    for _ in range(depth):
        options = list(dict.fromkeys(m for parent in frontier for m in mutations(parent, fields)))
        rng.shuffle(options)
        if prefer is not None:
            options = [m for m in options if prefer(m)] + [m for m in options if not prefer(m)]
        found = next((m for m in options if is_new(m)), None)
        if found is not None:
            return found
        frontier = options
    return None
