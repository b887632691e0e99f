"""From an LLM reply to a candidate source file, in one of two styles.

* **program** (strong LLMs): the reply holds a whole Python file of one of the contract's
  kinds (`def score(W, X)`, or the mask program `def prune(W, X, sparsity, pattern)`).
  `extract_candidate` finds it among fenced blocks, unfenced code and prose, normalises its
  imports, and refuses a file that reads statistics the run did not collect (the gate's check).
* **expression** (weak LLMs such as the embedded 135M model): the reply holds
  one torch expression of W and X's fields; `agent.expression` validates its
  names and wraps it in a known-good template, so the model only has to get one
  line right.

Anything unusable raises `CandidateFormatError` whose message is written for
the LLM's repair turn (`repair_prompt`).
"""

from __future__ import annotations

import ast
import re
from typing import Literal, Mapping, Optional

from autoprune.agent.expression import CandidateFormatError, candidate_from_expression_reply
from autoprune.pruning import contract
from autoprune.sandbox.gate import missing_fields_error
from autoprune.sandbox.parser_lock import parse as parse_python

CodeStyle = Literal["program", "expression", "auto"]
_KINDS_TEXT = " or ".join(f"`{kind.signature}:` returning {kind.brief}" for kind in contract.KINDS)
CONTRACT_HINT = (f"Define exactly one of {_KINDS_TEXT}; " + contract.one_line() + " Import only torch and math.")

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CODE_START = re.compile(r"^(import |from |def |GROUP\s*=|@|[A-Za-z_]\w*\s*=)")
# Lines the contract does not need and the gate would refuse (typing, the stats class, __future__).
_DROP_IMPORT = re.compile(r"^\s*(from\s+(typing|__future__|autoprune[\w.]*|dataclasses)\s+import\b.*"
                          r"|import\s+(typing|dataclasses)\s*)$")

__all__ = ["CandidateFormatError", "CodeStyle", "extract_candidate", "candidate_from_reply",
           "resolve_code_style", "repair_prompt", "CONTRACT_HINT"]


def resolve_code_style(code_style: CodeStyle, *, embedded_llm: bool) -> str:
    """'auto' means expressions for the embedded model, whole programs for anything else."""
    if code_style == "auto":
        return "expression" if embedded_llm else "program"
    if code_style not in ("program", "expression"):
        raise ValueError(f"code_style must be program, expression or auto, not {code_style!r}")
    return code_style


def candidate_from_reply(text: str, style: str, *, hypothesis: str = "",
                         offered: Optional[Mapping[str, bool]] = None) -> str:
    """The candidate source for a write_code (or repair) reply in the given style; `offered`: the
    statistics the run collected (`contract.available`'s flags), all an expression may name."""
    if style == "expression":
        return candidate_from_expression_reply(text, hypothesis=hypothesis, offered=offered)
    source = extract_candidate(text)
    missing = missing_fields_error(parse_python(source), offered) if offered is not None else None
    if missing:
        raise CandidateFormatError(f"{missing}. " + CONTRACT_HINT)
    return source


def extract_candidate(text: str) -> str:
    """The Python file defining one of the contract's kinds inside an LLM reply, imports normalised."""
    blocks = _code_blocks(text)
    if not blocks:
        raise CandidateFormatError("your reply contained no Python code. " + CONTRACT_HINT)
    parsed, last_error = [], ""
    for block in blocks:
        source = _renamed_single_function(_parseable_prefix(block))
        try:
            parsed.append((source, parse_python(source)))
        except SyntaxError as exc:
            last_error = f"line {exc.lineno}: {exc.msg}"
    with_kind = [(s, t) for s, t in parsed if _defines_kind(t)]
    if with_kind:
        return normalise_imports(with_kind[-1][0])  # models refine: the last full version wins
    if last_error and not parsed:
        raise CandidateFormatError(f"your code does not parse ({last_error}); it may be cut off. "
                                   "Write a shorter, complete file. " + CONTRACT_HINT)
    signatures = " or ".join(f"`{kind.signature}`" for kind in contract.KINDS)
    raise CandidateFormatError(f"your code has no top-level {signatures}. " + CONTRACT_HINT)


def _code_blocks(text: str) -> list[str]:
    """Fenced blocks (an unterminated last fence counts: replies get cut at max_tokens), else unfenced code."""
    fenced = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    fenced = [b for b in fenced if b.strip()]
    if fenced:
        return fenced
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    return ["\n".join(lines[start:])] if start is not None else []


def _parseable_prefix(block: str) -> str:
    """Drop trailing prose after the code: the longest prefix of lines that parses."""
    lines = block.strip("\n").splitlines()
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        try:
            parse_python(candidate)
            return candidate + "\n"
        except SyntaxError:
            continue
    return block


def _arity(node: ast.FunctionDef) -> int:
    return len(node.args.posonlyargs) + len(node.args.args)


def _defines_kind(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name in contract.KIND_BY_NAME
               and _arity(n) == len(contract.KIND_BY_NAME[n.name].params) for n in tree.body)


def _renamed_single_function(source: str) -> str:
    """No function named like a kind, but one with a kind's arity (`wanda_score`, `score_v2`,
    `obs_prune`): the first one is meant.

    Models often name the function after the idea, or emit a chain of near-copies; the first
    function with a kind's number of parameters (preferring names containing the kind's name,
    and `score` over `prune`) is renamed.
    """
    try:
        tree = parse_python(source)
    except SyntaxError:
        return source
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if any(f.name in contract.KIND_BY_NAME for f in funcs):
        return source
    for kind in contract.KINDS:
        fitting = [f for f in funcs if _arity(f) == len(kind.params)]
        if fitting:
            chosen = next((f for f in fitting if kind.name in f.name.lower()), fitting[0])
            return re.sub(rf"\b{re.escape(chosen.name)}\b", kind.name, source)
    return source


def normalise_imports(source: str) -> str:
    """Drop typing/autoprune imports; make sure torch and math are imported when used."""
    lines = [line for line in source.splitlines() if not _DROP_IMPORT.match(line)]
    body = "\n".join(lines).strip("\n") + "\n"
    # The annotation's class is not importable inside the sandbox: keep it as a string.
    body = re.sub(r'(?<!["\w])ActivationStats(?!["\w])', '"ActivationStats"', body)
    needed = [m for m in ("math", "torch") if re.search(rf"\b{m}\.", body)
              and not re.search(rf"^\s*import\s+{m}\b", body, re.M)]
    header = "".join(f"import {m}\n" for m in needed)
    return header + body


def repair_prompt(error: str, source: str) -> str:
    """The user turn that asks the LLM to fix a rejected or crashed candidate."""
    first_lines = "\n".join(error.strip().splitlines()[:8])
    return ("Your candidate was rejected.\n"
            f"Error:\n{first_lines}\n\n"
            f"Your code:\n```python\n{source.strip()}\n```\n\n"
            "Fix exactly this error and keep the idea. " + CONTRACT_HINT +
            " Reply with the complete corrected file in one ```python block and nothing else.")
