"""The static gate: the host-side check every candidate passes before it may run.

Milliseconds, no execution. A rejection carries a message written for the LLM's
repair step: the line, what is forbidden, and what to do instead. The candidate's kind
(`score` or `prune`, autoprune/pruning/contract.py's `KINDS`) is read here, and, given what
the run collected (`offered`), a candidate reading an X field the bundle does not carry is
refused here too, with the expression checker's words (`contract.not_offered_message`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Mapping, Optional

from autoprune.pruning import contract
from autoprune.sandbox.policy import MAX_SOURCE_BYTES, compile_candidate, uncompilable_error
from autoprune.sandbox.parser_lock import parse as parse_python


@dataclass(frozen=True)
class GateResult:
    ok: bool
    message: str = ""
    errors: list[str] = field(default_factory=list)
    group: str = "row"
    kind: str = "score"          # the contract's kind: "score" | "prune"


def _arity(node: ast.FunctionDef) -> int:
    return len(node.args.args) + len(node.args.posonlyargs)


def candidate_kind(tree: ast.Module) -> tuple[Optional[contract.CandidateKind], str]:
    """(the kind the module defines, "") or (None, the rejection): exactly one top-level function
    named like a kind, with that kind's number of positional parameters."""
    defined: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in contract.KIND_BY_NAME:
            defined.setdefault(node.name, node)
    signatures = " or ".join(f"'{k.signature}'" for k in contract.KINDS)
    if len(defined) > 1:
        return None, (f"Line {max(n.lineno for n in defined.values())}: the file defines both "
                      f"{' and '.join(defined)}; define exactly one of {signatures}")
    if not defined:
        return None, (f"Line 1: no top-level {signatures}; define one (score: a tensor shaped like W, "
                      "higher = keep; prune: the bool keep-mask of the layer)")
    (name, node), = defined.items()
    kind = contract.KIND_BY_NAME[name]
    if _arity(node) != len(kind.params):
        return None, (f"Line {node.lineno}: no top-level '{kind.signature}' with exactly {len(kind.params)} "
                      f"parameters ('{name}' takes {_arity(node)}); write exactly '{kind.signature}'")
    return kind, ""


def fields_read(tree: ast.AST) -> dict[str, int]:
    """The contract fields a source reads ({name: first line}): X's fields are reached only as
    attributes (no getattr, no subscripts on X), and the ones a run may lack (hinv_diag, gram,
    grad) are no attribute of any other object a candidate can hold."""
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in contract.BY_NAME:
            found[node.attr] = min(found.get(node.attr, node.lineno), node.lineno)
    return found


def needs_of(source: str) -> set[str]:
    """What a run must collect for `source` (the contract's `needs` of the fields it reads):
    "gram" means its bundle must carry X.gram (`write_scoring_bundle(..., with_gram=True)`)."""
    try:
        tree = parse_python(source)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return set()
    return {contract.BY_NAME[name].needs for name in fields_read(tree)} - {None}


def missing_fields_error(tree: ast.AST, offered: Mapping[str, bool]) -> Optional[str]:
    """The rejection of a source that reads fields the run did not collect, or None."""
    read = fields_read(tree)
    missing = contract.not_offered(read, **offered)
    if not missing:
        return None
    line = min(read[name] for name in missing)
    return f"Line {line}: {contract.not_offered_message(missing, **offered)}"


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


def check_source(source: str, offered: Optional[Mapping[str, bool]] = None) -> GateResult:
    """Run the whole gate; never raises for bad candidates (returns ok=False). `offered`: what the
    run collected (`contract.available`'s flags, e.g. `ScoringBundle.offered()`); None leaves the
    fields to the worker, which refuses uncollected ones with the same message."""
    size = len(source.encode("utf-8", "replace"))
    if size > MAX_SOURCE_BYTES:
        return _reject(f"source is {size} bytes, the limit is {MAX_SOURCE_BYTES}; "
                       "write a shorter candidate file")
    try:
        tree = parse_python(source)
    except SyntaxError as exc:
        return _reject(f"Line {exc.lineno}: syntax error: {exc.msg}; fix the Python syntax")
    except (RecursionError, MemoryError, ValueError) as exc:   # the parser's own limits
        return _reject(uncompilable_error(exc))
    _, errors = compile_candidate(source)
    if errors:
        return _reject(*(_with_hint(e) for e in errors))
    kind, error = candidate_kind(tree)
    if kind is None:
        return _reject(error)
    group = declared_group(tree) or kind.group
    if group not in ("row", "layer"):
        return _reject(f"GROUP must be the string \"row\" or \"layer\", got {group!r}")
    missing = missing_fields_error(tree, offered) if offered is not None else None
    if missing:
        return _reject(missing)
    return GateResult(ok=True, group=group, kind=kind.name)
