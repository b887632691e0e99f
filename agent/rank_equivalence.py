"""Which scoring expressions prune identically, found from their text (never executed).

A mask depends only on the ORDER of the scores inside each group (a row of W, or the
whole layer). `W.pow(2) * X.sq_mean` therefore prunes exactly like Wanda's
`W.abs() * X.norm`: X.norm = sqrt(N * X.sq_mean) over N calibration tokens, so the first
is the square of the second divided by N, a monotone transform. The embedded 135M model
writes such rewrites often: 8 of the 14 `duplicate` verdicts in
benchmarks/results/agent_run_mutation.md were exact rewrites, each a sandbox run and a
unit of budget spent to learn nothing.

`rank_signature` reads the expression tree as a sum of monomials c * prod(atom**e) over
the atoms |W|, sign(W), X's statistics (their signs and identities come from the contract,
autoprune/pruning/contract.py), N = X.nsamples and opaque sub-expressions (any call not
modelled here, keyed by its text), with these exact rewrites:
- W = sign(W) * |W| and sign(W)**2 = 1; abs() of a monomial drops its signs;
- X.norm = N**0.5 * X.sq_mean**0.5, X.hess_diag = N * X.sq_mean; sqrt, square, pow / ** with a number exponent;
  sums are collected, products stay factored (a sum inside a product is one composite
  atom, scaled so its first term's coefficient is 1); unsqueeze(0), float() change nothing;
then, for ranking only: a constant term added to other terms is dropped (a shift), and a
single monomial loses its positive factors that are constant within the layer (its
coefficient, N, X.num_layers, `1 + X.layer_index / X.num_layers`) and, when it is
nonnegative, has its exponents divided by the largest magnitude (s -> s**k, k > 0; a
factor that is nonnegative only through an even power stays marked: X.mean**2 ranks as
|X.mean|, not as X.mean). Two
expressions with one signature (and one GROUP) rank every group alike; different
signatures may still prune alike (the sandbox's mask comparison catches those).
"""

from __future__ import annotations

import ast
from typing import Optional

from autoprune.pruning import contract
from autoprune.sandbox.parser_lock import parse as parse_python

Monomial = tuple[tuple[str, float], ...]       # sorted (atom, exponent), no zero exponents
Polynomial = dict[Monomial, float]             # monomial -> coefficient

SIGN_W, ABS_W = "sign(W)", "|W|"
EVEN_POWER = "even"        # marks a score made nonnegative by even powers of signed factors


def _atoms_with(*signs: str) -> frozenset[str]:
    """X's fields whose sign (autoprune/pruning/contract.py) is one of `signs`."""
    return frozenset(f"X.{s.name}" for s in contract.STATISTICS if s.sign in signs)


POSITIVE_LAYER_CONSTANTS = _atoms_with("positive-constant")
LAYER_CONSTANTS = _atoms_with("positive-constant", "constant")
NONNEGATIVE_ATOMS = _atoms_with("positive-constant", "constant", "positive", "nonnegative") | {ABS_W}
# Fields that are exact products of others (X.norm = N**0.5 * X.sq_mean**0.5): rewritten into them.
IDENTITIES = {f"X.{s.name}": tuple((f"X.{atom}", e) for atom, e in s.identity)
              for s in contract.STATISTICS if s.identity}
NONNEGATIVE_SUM, POSITIVE_CONSTANT_SUM, OTHER_SUM = "[+ ", "[k ", "[? "
_DIGITS = 9


def rank_signature(expression: str, group: str = "row") -> Optional[str]:
    """A string equal for expressions that rank weights alike within `group`; None if unparsable."""
    try:
        tree = parse_python(expression, mode="eval")
        ranked = _for_ranking(_read(tree.body))
    except (SyntaxError, RecursionError, MemoryError, ArithmeticError, ValueError):
        return None                                # hostile nesting, 1e308 ** 2: no opinion
    return f"{group}:{sorted(ranked.items())!r}"


# ---- reading the tree ---------------------------------------------------------------------------

def _read(node: ast.AST) -> Polynomial:
    """The polynomial of `node`; anything not modelled becomes an opaque atom keyed by its text."""
    value = _modelled(node)
    return value if value is not None else _atom("{" + ast.unparse(node) + "}")


def _modelled(node: ast.AST) -> Optional[Polynomial]:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _constant(node.value)
    if isinstance(node, ast.Name) and node.id == "W":
        return {((ABS_W, 1.0), (SIGN_W, 1.0)): 1.0}
    if isinstance(node, ast.Attribute):
        return _attribute(node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _read(node.operand)
        return _scaled(inner, -1.0) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        return _binary(node)
    if isinstance(node, ast.Call):
        return _call(node)
    return None


def _attribute(node: ast.Attribute) -> Optional[Polynomial]:
    if not isinstance(node.value, ast.Name):
        return None
    if node.value.id == "X" and f"X.{node.attr}" in IDENTITIES:
        return {_monomial(dict(IDENTITIES[f"X.{node.attr}"])): 1.0}
    if node.value.id == "X":
        return _atom(f"X.{node.attr}")
    if node.value.id == "math" and node.attr in ("pi", "e"):
        return _constant(3.141592653589793 if node.attr == "pi" else 2.718281828459045)
    return None


def _binary(node: ast.BinOp) -> Optional[Polynomial]:
    left, right = _read(node.left), _read(node.right)
    if isinstance(node.op, ast.Add):
        return _add(left, right)
    if isinstance(node.op, ast.Sub):
        return _add(left, _scaled(right, -1.0))
    if isinstance(node.op, ast.Mult):
        return _multiply(left, right)
    if isinstance(node.op, ast.Div):
        inverse = _power(right, -1.0)
        return _multiply(left, inverse) if inverse is not None else None
    if isinstance(node.op, ast.Pow):
        exponent = _number(right)
        return _power(left, exponent) if exponent is not None else None
    return None


def _call(node: ast.Call) -> Optional[Polynomial]:
    """Methods (`t.sqrt()`) and functions (`torch.sqrt(t)`, `abs(t)`) that are modelled."""
    func, args = node.func, list(node.args)
    if node.keywords:
        return None
    if isinstance(func, ast.Attribute) and not _is_module(func.value):
        name, operand = func.attr, func.value
    elif isinstance(func, ast.Attribute) and args:
        name, operand, args = func.attr, args[0], args[1:]
    elif isinstance(func, ast.Name) and func.id == "abs" and len(args) == 1:
        name, operand, args = "abs", args[0], []
    else:
        return None
    return _apply(name, _read(operand), [_read(a) for a in args])


def _apply(name: str, operand: Polynomial, args: list[Polynomial]) -> Optional[Polynomial]:
    if name in ("float", "double") and not args:
        return operand
    if name == "unsqueeze" and len(args) == 1 and _number(args[0]) == 0:
        return operand
    if name == "abs" and not args:
        return _absolute(operand)
    if name in ("sqrt", "square") and not args:
        return _power(operand, 0.5 if name == "sqrt" else 2.0)
    if name == "pow" and len(args) == 1 and _number(args[0]) is not None:
        return _power(operand, _number(args[0]))
    return None


def _is_module(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in ("torch", "math")


# ---- polynomial arithmetic ------------------------------------------------------------------------

def _atom(name: str) -> Polynomial:
    return {((name, 1.0),): 1.0}


def _constant(value: float) -> Polynomial:
    return {(): float(value)} if value else {}


def _number(poly: Polynomial) -> Optional[float]:
    if not poly:
        return 0.0
    return poly[()] if list(poly) == [()] else None


def _monomial(exponents: dict[str, float]) -> Monomial:
    if SIGN_W in exponents:
        exponents[SIGN_W] = exponents[SIGN_W] % 2
    rounded = ((atom, round(e, _DIGITS)) for atom, e in exponents.items())
    return tuple(sorted((atom, e) for atom, e in rounded if e != 0))


def _times(a: Monomial, b: Monomial) -> Monomial:
    exponents = dict(a)
    for atom, e in b:
        exponents[atom] = exponents.get(atom, 0.0) + e
    return _monomial(exponents)


def _add(p: Polynomial, q: Polynomial) -> Polynomial:
    total = dict(p)
    for mono, c in q.items():
        total[mono] = round(total.get(mono, 0.0) + c, _DIGITS)
    return {mono: c for mono, c in total.items() if c != 0}


def _scaled(p: Polynomial, factor: float) -> Polynomial:
    return {mono: c * factor for mono, c in p.items()}


def _multiply(p: Polynomial, q: Polynomial) -> Polynomial:
    """Products stay factored: a sum times anything is a power of one composite atom (so
    W.pow(2) * (a + b) and W.abs() * (a + b).sqrt() keep one shape)."""
    (a, ca), (b, cb) = _as_term(p), _as_term(q)
    return _constant(0.0) if ca * cb == 0 else {_times(a, b): ca * cb}


def _as_term(p: Polynomial) -> tuple[Monomial, float]:
    """(monomial, coefficient) for `p`; a sum becomes coefficient * [sum / coefficient]."""
    if not p:
        return (), 0.0
    if len(p) == 1:
        return next(iter(p.items()))
    terms = sorted(p.items())
    lead = terms[0][1]
    nonnegative = all(c > 0 and all(_nonnegative(atom, e) for atom, e in mono) for mono, c in terms)
    layer_constant = all(_is_layer_constant(atom) for mono, _ in terms for atom, _ in mono)
    kind = (POSITIVE_CONSTANT_SUM if nonnegative and layer_constant and () in p
            else NONNEGATIVE_SUM if nonnegative else OTHER_SUM)
    name = kind + repr([(mono, round(c / lead, _DIGITS)) for mono, c in terms]) + "]"
    return ((name, 1.0),), lead


def _is_layer_constant(atom: str) -> bool:
    return atom in LAYER_CONSTANTS or atom.startswith(POSITIVE_CONSTANT_SUM)


def _is_positive_layer_constant(atom: str) -> bool:
    """One value per layer, > 0: N, X.num_layers, X.in_features, `1 + X.layer_index / X.num_layers`."""
    return atom in POSITIVE_LAYER_CONSTANTS or atom.startswith(POSITIVE_CONSTANT_SUM)


def _power(p: Polynomial, k: float) -> Optional[Polynomial]:
    mono, c = _as_term(p)
    if c == 0 or (c < 0 and not float(k).is_integer()):
        return None
    return {_monomial({atom: e * k for atom, e in mono}): c ** k}


def _absolute(p: Polynomial) -> Optional[Polynomial]:
    mono, c = _as_term(p)
    exponents = {atom: e for atom, e in mono if atom != SIGN_W}
    if all(_nonnegative(atom, e) for atom, e in exponents.items()):
        return {_monomial(exponents): abs(c)}
    return None


def _nonnegative(atom: str, exponent: float) -> bool:
    return (atom in NONNEGATIVE_ATOMS or atom.startswith((NONNEGATIVE_SUM, POSITIVE_CONSTANT_SUM))
            or (float(exponent).is_integer() and int(exponent) % 2 == 0))


# ---- what ranking ignores --------------------------------------------------------------------------

def _for_ranking(p: Polynomial) -> Polynomial:
    """Drop an added constant, positive constant factors and (for s >= 0) the overall power."""
    if len(p) > 1:
        p = {mono: c for mono, c in p.items() if mono != ()}
    if len(p) != 1:
        return p
    (mono, c), = p.items()
    if mono == ():
        return {(): 0.0}                                  # a constant score: every order alike
    exponents = {atom: e for atom, e in mono if not _is_positive_layer_constant(atom)}
    if exponents and all(_nonnegative(atom, e) for atom, e in exponents.items()):
        largest = max(abs(e) for e in exponents.values())
        signed = any(not _nonnegative(atom, 1.0) for atom in exponents)   # X.mean**2: |X.mean|, not X.mean
        exponents = {atom: e / largest for atom, e in exponents.items()} | ({EVEN_POWER: 1.0} if signed else {})
    return {_monomial(exponents): 1.0 if c > 0 else -1.0}
