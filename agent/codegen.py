"""From an LLM reply to a candidate source file, in one of two styles.

* **program** (strong LLMs): the reply holds a whole Python file defining
  `def score(W, X)`. `extract_candidate` finds it among fenced blocks, unfenced
  code and prose, and normalises its imports.
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

CodeStyle = Literal["program", "expression", "auto"]
CONTRACT_HINT = ("Define exactly `def score(W, X):` returning a tensor shaped like W (out, in); "
                 + contract.one_line() + " Import only torch and math.")

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
    return extract_candidate(text)


def extract_candidate(text: str) -> str:
    """The Python file defining `score(W, X)` inside an LLM reply, with imports normalised."""
    blocks = _code_blocks(text)
    if not blocks:
        raise CandidateFormatError("your reply contained no Python code. " + CONTRACT_HINT)
    parsed, last_error = [], ""
    for block in blocks:
        source = _renamed_single_function(_parseable_prefix(block))
        try:
            parsed.append((source, ast.parse(source)))
        except SyntaxError as exc:
            last_error = f"line {exc.lineno}: {exc.msg}"
    with_score = [(s, t) for s, t in parsed if _defines_score(t)]
    if with_score:
        return normalise_imports(with_score[-1][0])  # models refine: the last full version wins
    if last_error and not parsed:
        raise CandidateFormatError(f"your code does not parse ({last_error}); it may be cut off. "
                                   "Write a shorter, complete file. " + CONTRACT_HINT)
    raise CandidateFormatError("your code has no top-level `def score(W, X)` with two parameters. "
                               + CONTRACT_HINT)


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
            ast.parse(candidate)
            return candidate + "\n"
        except SyntaxError:
            continue
    return block


def _defines_score(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "score"
               and len(n.args.posonlyargs) + len(n.args.args) == 2 for n in tree.body)


def _renamed_single_function(source: str) -> str:
    """No `score`, but two-argument functions (`wanda_score`, `score_v2`): the first one is meant.

    Small models often name the function after the idea, or emit a chain of near-copies;
    the first two-argument function (preferring names containing "score") is renamed.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    two_arg = [f for f in funcs if len(f.args.posonlyargs) + len(f.args.args) == 2]
    if any(f.name == "score" for f in funcs) or not two_arg:
        return source
    chosen = next((f for f in two_arg if "score" in f.name.lower()), two_arg[0])
    return re.sub(rf"\b{re.escape(chosen.name)}\b", "score", source)


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
