"""One lock around CPython's parser and compiler for every thread of a run.

CPython 3.11's AST validation keeps its recursion-depth bookkeeping per interpreter, not per
thread: two threads parsing at once (the graph writing the next candidate while the evaluation
pipeline gates the current one) can fail with "SystemError: AST constructor recursion depth
mismatch". Everything that parses or compiles candidate code on the host does it through here.
"""

from __future__ import annotations

import ast
import threading

PARSER_LOCK = threading.RLock()


def parse(source: str, filename: str = "<unknown>", mode: str = "exec") -> ast.AST:
    with PARSER_LOCK:
        return ast.parse(source, filename, mode)
