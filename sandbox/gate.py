"""The static gate: the host-side check every candidate passes before it may run.

Milliseconds, no execution. A rejection carries a message written for the LLM's
repair step: the line, what is forbidden, and what to do instead.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from autoprune.sandbox.policy import MAX_SOURCE_BYTES, compile_candidate, uncompilable_error


@dataclass(frozen=True)
class GateResult:
    ok: bool
    message: str = ""
    errors: list[str] = field(default_factory=list)
    group: str = "row"


def _has_score_function(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "score":
            return len(node.args.args) + len(node.args.posonlyargs) == 2
    return False


def declared_group(tree: ast.Module) -> str | None:
    """The literal value of a top-level `GROUP = "..."`, or None if absent."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "GROUP" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
            return "<not a string literal>"
    return None


def _with_hint(error: str) -> str:
    """RestrictedPython's own messages say what is wrong; add what to do instead."""
    if 'starts with "_"' in error:
        return error + " Names and attributes starting with '_' (dunders such as __class__, " \
                       "__globals__, __subclasses__) are forbidden; use the public torch API."
    if "reserved name" in error:
        return error + " Rename the variable."
    return error


def _reject(*errors: str) -> GateResult:
    lines = "\n".join(errors)
    return GateResult(ok=False, errors=list(errors),
                      message=f"candidate rejected by the static gate:\n{lines}")


def check_source(source: str) -> GateResult:
    """Run the whole gate; never raises for bad candidates (returns ok=False)."""
    size = len(source.encode("utf-8", "replace"))
    if size > MAX_SOURCE_BYTES:
        return _reject(f"source is {size} bytes, the limit is {MAX_SOURCE_BYTES}; "
                       "write a shorter score() function")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return _reject(f"Line {exc.lineno}: syntax error: {exc.msg}; fix the Python syntax")
    except (RecursionError, MemoryError, ValueError) as exc:   # the parser's own limits
        return _reject(uncompilable_error(exc))
    _, errors = compile_candidate(source)
    if errors:
        return _reject(*(_with_hint(e) for e in errors))
    if not _has_score_function(tree):
        return _reject("Line 1: no top-level 'def score(W, X)' with exactly two parameters; "
                       "define it and return a tensor shaped like W (higher = keep)")
    group = declared_group(tree) or "row"
    if group not in ("row", "layer"):
        return _reject(f"GROUP must be the string \"row\" or \"layer\", got {group!r}")
    return GateResult(ok=True, group=group)
