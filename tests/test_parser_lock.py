"""CPython 3.11 fails concurrent parses with "SystemError: AST constructor recursion depth mismatch"
(seen: the graph writing a candidate while the pipeline gated the previous one, pipeline depth 1).
Every host-side parse goes through `autoprune.sandbox.parser_lock`."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

PACKAGES = ("autoprune", "autoprune.agent", "autoprune.sandbox", "autoprune.evaluators")
IN_THE_CONTAINER = {"autoprune.sandbox/worker.py"}     # one process, one thread: it compiles on its own
BARE_PARSE = re.compile(r"\bast\.parse\(|(?<![\w.])compile\(|compile_restricted\w*\(")


def host_sources():
    seen = set()
    for package in PACKAGES:
        root = Path(importlib.import_module(package).__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            rel = f"{package}/{path.relative_to(root).as_posix()}"
            if path in seen or rel in IN_THE_CONTAINER or rel == "autoprune.sandbox/parser_lock.py":
                continue
            seen.add(path)
            yield rel, path.read_text(encoding="utf-8")


def test_no_host_module_parses_python_outside_the_lock():
    offenders = []
    for rel, text in host_sources():
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if BARE_PARSE.search(code) and "re.compile" not in code and "graph.compile" not in code:
                if rel == "autoprune.sandbox/policy.py" and "compile_restricted_exec(source" in code:
                    continue                     # inside `with PARSER_LOCK:` (compile_candidate)
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []
