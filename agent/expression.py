"""Expression mode: a weak LLM writes one torch expression, we write the program.

The embedded 135M model rarely produces a whole valid file, but it can produce
`W.abs() * X.norm.sqrt()`. The expression is parsed (never executed here),
every name in it is checked against what the contract offers (W, X's fields from
autoprune/pruning/contract.py, a list of torch / tensor / math functions, numbers), a few habits of small
models are corrected (`X.norm()` for the field `X.norm`, `np.` for `torch.`,
`return ...` / `score = ...` prefixes), and the result is wrapped in a
known-good template that broadcasts it to W's shape.
"""

from __future__ import annotations

import ast
import re
from typing import Mapping, Optional

from autoprune.errors import LLMError
from autoprune.pruning import contract
from autoprune.sandbox.policy import MAX_AST_DEPTH, tree_size_error
from autoprune.sandbox.parser_lock import parse as parse_python


class CandidateFormatError(LLMError):
    """An LLM reply is not a usable candidate; the message is the repair instruction."""


# X's fields an expression may name: the contract's numbers and tensors (X.name is text).
X_FIELDS = frozenset(contract.TENSOR_NAMES + contract.NUMBER_NAMES)
EVERY_FIELD = {"has_hessian": True, "has_gram": True, "has_grad": True}   # `contract.available` flags: all of X
X_TENSOR_FIELDS = contract.CHANNEL_NAMES       # per input channel, shape (in,)
TORCH_FUNCTIONS = frozenset({
    "abs", "sqrt", "rsqrt", "log", "log1p", "log2", "log10", "exp", "expm1", "pow", "square", "sign",
    "clamp", "clamp_min", "clamp_max", "maximum", "minimum", "where", "tanh", "sigmoid", "atan",
    "erf", "reciprocal", "mean", "sum", "std", "var", "amax", "amin", "max", "min", "norm",
    "outer", "diag", "diagonal", "ones_like", "zeros_like", "full_like", "softmax", "relu",
    "median", "quantile", "exp2", "cos", "sin", "floor", "ceil", "round", "logsumexp", "cumsum",
    "sort", "argsort", "rank", "float32", "std_mean", "var_mean", "isnan", "nan_to_num",
    "broadcast_to", "as_tensor", "tensor", "matmul", "mm", "cosh", "sinh",
})
TENSOR_METHODS = TORCH_FUNCTIONS | frozenset({
    "unsqueeze", "squeeze", "reshape", "view", "t", "T", "expand", "expand_as", "float", "double",
    "clone", "abs_", "argsort", "numel", "size", "shape", "dim", "mul", "add", "sub", "div",
    "values", "indices", "item"})
TENSOR_PROPERTIES = frozenset({"T", "shape", "values", "indices"})    # attributes, not methods
MATH_NAMES = frozenset({"sqrt", "log", "log2", "log10", "exp", "pi", "e", "tanh", "pow", "fabs",
                        "floor", "ceil", "inf", "tau", "atan", "cos", "sin"})
_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Attribute, ast.Name,
                  ast.Constant, ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.Subscript,
                  ast.Slice, ast.Tuple, ast.IfExp, ast.Compare, ast.cmpop)
BUILTIN_NAMES = frozenset({"abs", "min", "max", "float", "int"})
MAX_EXPRESSION_CHARS = 2000     # one scoring expression; longer replies are not salvaged



def expression_hint(**offered: bool) -> str:
    """What an expression may use: the contract's fields the run offers (`contract.available`'s flags)."""
    specs = contract.available(**offered)
    channel = ", ".join(f"X.{s.name}" for s in specs if s.is_channel)
    numbers = ", ".join(f"X.{n}" for n in contract.NUMBER_NAMES)
    return (f"Write ONE Python expression using W (weights, shape (out, in)), {channel} (shape (in,), "
            f"broadcast over the rows of W), {numbers}, torch functions and numbers; for example "
            "W.abs() * X.norm")


EXPRESSION_HINT = expression_hint()


def offered_fields(**offered: bool) -> frozenset[str]:
    """X's fields an expression may name in a run that collected `offered` (`contract.available`'s flags)."""
    return frozenset(s.name for s in contract.available(**offered)) & X_FIELDS

TEMPLATE = '''import math
import torch

GROUP = "{group}"


def score(W, X):
    """{doc}"""
    s = {expr}
    return torch.broadcast_to(torch.as_tensor(s, dtype=W.dtype), W.shape)
'''


def candidate_from_expression_reply(text: str, *, hypothesis: str = "", group: str = "row",
                                    offered: Optional[Mapping[str, bool]] = None) -> str:
    """Find, repair and validate the expression in a reply, and wrap it into a candidate file.
    `offered`: what the run collected (`contract.available`'s flags; None: the fields always there)."""
    expr = extract_expression(text, offered)
    return wrap_expression(expr, hypothesis=hypothesis, group=group)


def wrap_expression(expr: str, *, hypothesis: str = "", group: str = "row") -> str:
    doc = " ".join((hypothesis or "importance = " + expr).split()).replace('"""', "'")[:200]
    doc = doc.replace("\\", "/")
    return TEMPLATE.format(group=group, doc=doc, expr=expr)


def extract_expression(text: str, offered: Optional[Mapping[str, bool]] = None) -> str:
    """The first line of the reply holding a valid expression (fenced blocks searched first)."""
    first_error = None
    for line in _candidate_lines(text):
        for expr in salvage_variants(clean_expression(line)):
            try:
                validate_expression(expr, offered)
                return expr
            except CandidateFormatError as exc:
                first_error = first_error or exc
    if first_error is not None:
        raise first_error
    raise CandidateFormatError("your reply contained no expression. " + expression_hint(**(offered or {})))


def salvage_variants(expr: str) -> list[str]:
    """The expression, then readings of two common small-model slips.

    `a = b` (an assignment where an expression was asked): each side; a reply cut at
    max_tokens mid-expression: its longest prefix ending before a top-level + - * /.
    """
    if not expr:
        return []
    if len(expr) > MAX_EXPRESSION_CHARS:
        return [expr]            # validate_expression refuses it; no quadratic salvage
    variants = [expr]
    sides = re.split(r"(?<![=<>!])=(?!=)", expr)
    if len(sides) == 2:
        variants += [sides[0].strip(), sides[1].strip()]
    variants += _complete_prefixes(expr)
    return list(dict.fromkeys(v for v in variants if v))


def _complete_prefixes(expr: str) -> list[str]:
    """Prefixes cut at top-level binary operators, longest first, that parse."""
    cuts, depth = [], 0
    for i, ch in enumerate(expr):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and ch in "+-*/" and i > 0:
            cuts.append(i)
    prefixes = []
    for i in reversed(cuts):
        prefix = expr[:i].rstrip(" *")
        try:
            parse_python(prefix, mode="eval")
            prefixes.append(prefix)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return prefixes


def _candidate_lines(text: str) -> list[str]:
    fenced = re.findall(r"```[^\n]*\n(.*?)(?:```|\Z)", text, re.S)
    inline = re.findall(r"`([^`\n]+)`", text)
    lines = [ln for block in fenced for ln in block.splitlines()] + inline + text.splitlines()
    # A full function: its return line is the expression.
    returns = [ln for ln in lines if ln.strip().startswith("return ")]
    return returns + [ln for ln in lines if "W" in ln or "X." in ln]


def clean_expression(line: str) -> str:
    """Strip prefixes and habits small models add around an expression."""
    s = line.strip().strip("`").strip()
    s = re.sub(r"^(?:[-*>]\s+|\d+[.)]\s+)", "", s)                                # list bullets
    s = re.sub(r"^(?:python\s+)?(?:return|score\s*=|s\s*=|expr(?:ession)?\s*[:=]|importance\s*[:=]"
               r"|answer\s*:|EXPR\s*:|score\(W,\s*X\)\s*=)\s*", "", s, flags=re.I)
    s = s.rstrip(";.,").strip().strip("`").strip()
    s = re.sub(r"\bnp\.|\bnumpy\.", "torch.", s)
    s = re.sub(r"\bX\.(" + "|".join(X_TENSOR_FIELDS) + r")\(\)", r"X.\1", s)      # X.norm() -> X.norm
    s = re.sub(r"\bX\[['\"](\w+)['\"]\]", r"X.\1", s)                              # X['norm'] -> X.norm
    s = s.replace("torch.Tensor.", "torch.")
    return s


def validate_expression(expr: str, offered: Optional[Mapping[str, bool]] = None) -> ast.Expression:
    """Parse and check every name; raise CandidateFormatError with a repair hint. `offered`: what
    the run collected (`contract.available`'s flags; None: only the fields always there)."""
    offered = dict(offered or {})
    fields = offered_fields(**offered)
    too_deep = ("the expression is too long or too deeply nested; write a shorter one (at most "
                f"{MAX_EXPRESSION_CHARS} characters). " + EXPRESSION_HINT)
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise CandidateFormatError(too_deep)
    try:
        tree = parse_python(expr, mode="eval")
    except SyntaxError as exc:
        raise CandidateFormatError(f"`{expr[:120]}` is not a Python expression ({exc.msg}). "
                                   + EXPRESSION_HINT) from exc
    except (ValueError, RecursionError, MemoryError):
        raise CandidateFormatError(too_deep) from None
    if tree_size_error(tree, max_depth=MAX_AST_DEPTH - 10):   # the template nests it ~5 deeper
        raise CandidateFormatError(too_deep)
    uses_weights = False
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise CandidateFormatError(f"`{type(node).__name__}` is not allowed in the expression "
                                       "(no lambdas, comprehensions, assignments or strings). "
                                       + EXPRESSION_HINT)
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise CandidateFormatError(f"only numbers may appear as constants, not {node.value!r}. "
                                       + EXPRESSION_HINT)
        if isinstance(node, ast.Name):
            _check_name(node)
            uses_weights |= node.id == "W"
        if isinstance(node, ast.Attribute):
            _check_attribute(node, fields, offered)
            _check_method_called(node, called)
    if not uses_weights:
        raise CandidateFormatError("the expression must use W: without it every weight of an input "
                                   "column scores alike and whole input channels are removed. "
                                   + EXPRESSION_HINT)
    return tree


def _check_method_called(node: ast.Attribute, called: set[int]) -> None:
    """A tensor method used as a value (`W.norm.unsqueeze(1)`) crashes in the sandbox: say so now."""
    on_tensor = not (isinstance(node.value, ast.Name) and node.value.id in ("X", "torch", "math"))
    if on_tensor and node.attr in TENSOR_METHODS - TENSOR_PROPERTIES and id(node) not in called:
        hint = " For the input channels' norm use X.norm." if node.attr == "norm" else ""
        raise CandidateFormatError(f"`.{node.attr}` is a method: call it, e.g. `.{node.attr}()`.{hint} "
                                   + EXPRESSION_HINT)


def _check_name(node: ast.Name) -> None:
    if node.id in ("W", "X", "torch", "math") or node.id in BUILTIN_NAMES:
        return
    raise CandidateFormatError(f"unknown name `{node.id}`; only W, X, torch, math and numbers exist. "
                               + EXPRESSION_HINT)


def _check_attribute(node: ast.Attribute, fields: frozenset[str], offered: dict) -> None:
    base, attr = node.value, node.attr
    if attr.startswith("_"):
        raise CandidateFormatError(f"`.{attr}` is forbidden (no underscore attributes). " + EXPRESSION_HINT)
    if isinstance(base, ast.Name) and base.id == "X":
        if attr in X_FIELDS and attr not in fields:     # the program gate's words (sandbox/gate.py)
            raise CandidateFormatError(contract.not_offered_message([attr], **offered) + ". "
                                       + expression_hint(**offered))
        if attr not in fields:
            raise CandidateFormatError(f"X has no field `X.{attr}`; the fields are "
                                       f"{', '.join(sorted(fields))}. " + expression_hint(**offered))
    elif isinstance(base, ast.Name) and base.id == "torch":
        if attr not in TORCH_FUNCTIONS:
            raise CandidateFormatError(f"`torch.{attr}` is not available here; use elementwise math such "
                                       "as torch.abs, torch.sqrt, torch.log1p, torch.pow. " + EXPRESSION_HINT)
    elif isinstance(base, ast.Name) and base.id == "math":
        if attr not in MATH_NAMES:
            raise CandidateFormatError(f"`math.{attr}` is not available; use torch functions. "
                                       + EXPRESSION_HINT)
    elif attr not in TENSOR_METHODS:
        raise CandidateFormatError(f"tensor method `.{attr}` is not available; use .abs(), .sqrt(), "
                                   ".pow(p), .log1p(), .clamp(min=...). " + EXPRESSION_HINT)


def expression_of(source: str) -> str:
    """The scoring expression of a one-line candidate (`s = expr` template or a lone `return expr`), else ""."""
    try:
        tree = parse_python(source)
    except SyntaxError:
        return ""
    score = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "score"), None)
    if score is None:
        return ""
    body = [n for n in score.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None:
        return ast.unparse(body[0].value)
    if (len(body) == 2 and isinstance(body[0], ast.Assign) and [ast.unparse(t) for t in body[0].targets] == ["s"]
            and isinstance(body[1], ast.Return) and "broadcast_to" in ast.unparse(body[1])):
        return ast.unparse(body[0].value)
    return ""
