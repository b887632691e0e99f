"""The restricted-execution policy shared by the host gate and the in-container worker.

One policy, two places: the host compiles every candidate with it before anything
runs (fast rejection with a repair hint for the LLM), and the worker compiles it
again inside the container and executes it with the guarded globals below, so
the container never runs a candidate the gate would have refused.

Depends on RestrictedPython, torch and math only (it is imported in the image).
"""

from __future__ import annotations

import ast
import builtins
import types

import torch
from RestrictedPython import RestrictingNodeTransformer, compile_restricted_exec
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.PrintCollector import PrintCollector
from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence, guarded_unpack_sequence, safe_builtins,
)

MAX_SOURCE_BYTES = 64 * 1024

# Modules a candidate may import (DESIGN §2: "torch and math").
ALLOWED_IMPORTS = frozenset({"torch", "math", "torch.nn.functional", "torch.linalg",
                             "torch.special", "torch.fft"})
# Module objects a candidate may reach by attribute access (torch.os, torch.sys ... are not).
_ALLOWED_MODULE_NAMES = ALLOWED_IMPORTS | {"torch.nn"}

FORBIDDEN_BUILTINS = {
    "open": "candidates get W and X as arguments and must not touch files",
    "exec": "write the computation as plain code in score()",
    "eval": "write the computation as plain code in score()",
    "compile": "write the computation as plain code in score()",
    "globals": "pass values as arguments or module-level constants",
    "locals": "pass values as arguments or module-level constants",
    "vars": "use the attributes of X directly (X.norm, X.var, ...)",
    "getattr": "write the attribute directly, e.g. X.norm",
    "setattr": "build new tensors instead of changing objects",
    "delattr": "build new tensors instead of changing objects",
    "input": "candidates cannot read input",
    "breakpoint": "remove the debugging call",
    "memoryview": "use torch tensors",
    "type": "use isinstance() to test types",
    "object": "use plain functions and tensors",
    "dir": "use the documented fields of X: norm, sq_mean, mean, var, max_abs, gram, grad",
    "help": "remove the call",
    "exit": "return a tensor from score()",
    "quit": "return a tensor from score()",
}

# torch / tensor attributes that reach files, pickle, native code, processes or the network.
FORBIDDEN_ATTRIBUTES = frozenset({
    "load", "save", "from_file", "hub", "utils", "ops", "classes", "library", "jit", "compile",
    "distributed", "multiprocessing", "backends", "package", "onnx", "export", "fx", "profiler",
    "serialization", "storage", "untyped_storage", "tofile", "numpy", "share_memory_",
    "from_numpy", "from_dlpack", "to_dlpack", "set_default_device", "set_default_dtype",
    "set_num_threads", "set_printoptions", "manual_seed", "seed", "random", "overrides",
    "testing", "cpp", "mps", "xpu", "data_ptr", "register_hook", "autograd", "func",
    "modules", "parameter", "init", "dump", "dumps", "ctypes", "apply_", "map_", "map2_",
})


class CandidatePolicy(RestrictingNodeTransformer):
    """RestrictedPython's transformer plus our import allow-list and forbidden builtins."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.module_aliases: set[str] = set()

    def check_import_names(self, node):
        module = getattr(node, "module", None)
        names = [module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        for alias in node.names:
            self.module_aliases.add(alias.asname or alias.name.split(".")[0])
        for name in names:
            if name not in ALLOWED_IMPORTS:
                self.error(node, f"import of '{name}' is not allowed; a candidate may import only "
                                 f"{', '.join(sorted(ALLOWED_IMPORTS))}. Remove the import and "
                                 "compute with torch operations on W and X")
                return node
        return super().check_import_names(node)

    def visit_Name(self, node):
        hint = FORBIDDEN_BUILTINS.get(node.id)
        if hint is not None:
            self.error(node, f"'{node.id}' is forbidden in candidates; {hint}")
        return super().visit_Name(node)

    def visit_Attribute(self, node):
        if node.attr in FORBIDDEN_ATTRIBUTES:
            self.error(node, f"attribute '.{node.attr}' is forbidden (files, pickle, native code "
                             "or global state); use tensor math only")
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in self.module_aliases:
                self.error(node, f"assigning to '{ast.unparse(node)}' is forbidden (no "
                                 "monkeypatching of modules); compute new tensors instead")
        return super().visit_Attribute(node)

    def visit_Global(self, node):
        self.error(node, "'global' is forbidden; return values from functions instead")
        return node

    def visit_Nonlocal(self, node):
        self.error(node, "'nonlocal' is forbidden; return values from functions instead")
        return node

    def visit_ClassDef(self, node):
        self.error(node, "class definitions are forbidden; write plain functions")
        return node

    def visit_AsyncFunctionDef(self, node):
        self.error(node, "async functions are forbidden; write a plain def score(W, X)")
        return node


def compile_candidate(source: str, filename: str = "candidate.py"):
    """Compile with the policy: returns (code, errors). `errors` are 'Line N: ...' strings."""
    result = compile_restricted_exec(source, filename=filename, policy=CandidatePolicy)
    return result.code, list(result.errors)


# ---- runtime guards (used by the worker when executing a compiled candidate) ----

class GuardError(PermissionError):
    """A candidate tried something the policy forbids at run time."""


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level != 0 or name not in ALLOWED_IMPORTS:
        raise GuardError(f"import of '{name}' is not allowed (only torch and math)")
    for item in fromlist or ():
        if f"{name}.{item}" not in ALLOWED_IMPORTS and (item.startswith("_")
                                                       or item in FORBIDDEN_ATTRIBUTES):
            raise GuardError(f"'from {name} import {item}' is not allowed")
    return __import__(name, globals, locals, fromlist, level)


def guarded_getattr(obj, name, default=None):
    if not isinstance(name, str) or name.startswith("_") or name in FORBIDDEN_ATTRIBUTES:
        raise GuardError(f"attribute {name!r} is not allowed")
    if isinstance(obj, str) and name == "format":
        raise GuardError("str.format is not allowed; use f-strings")
    value = getattr(obj, name, default)
    if isinstance(value, types.ModuleType) and value.__name__ not in _ALLOWED_MODULE_NAMES:
        raise GuardError(f"module {value.__name__!r} is not reachable from candidates")
    return value


def guarded_write(obj):
    """Writes (x[i] = v, x.a = v) only into tensors and containers the candidate built."""
    if isinstance(obj, (torch.Tensor, list, dict)):
        return obj
    raise GuardError(f"cannot modify {type(obj).__name__} objects (no monkeypatching)")


def guarded_inplacevar(op, x, y):
    ops = {"+=": lambda: x + y, "-=": lambda: x - y, "*=": lambda: x * y, "/=": lambda: x / y,
           "//=": lambda: x // y, "%=": lambda: x % y, "**=": lambda: x ** y,
           "&=": lambda: x & y, "|=": lambda: x | y, "^=": lambda: x ^ y}
    if op not in ops:
        raise GuardError(f"operator {op} is not allowed")
    return ops[op]()


_EXTRA_BUILTINS = ("min", "max", "sum", "any", "all", "enumerate", "zip", "map", "filter",
                   "list", "dict", "tuple", "set", "sorted", "reversed", "abs", "float", "int",
                   "bool", "len", "range", "round", "isinstance", "ValueError", "RuntimeError",
                   "ZeroDivisionError", "Exception")


def candidate_globals() -> dict:
    """Fresh globals for executing one compiled candidate."""
    safe = {k: v for k, v in safe_builtins.items() if k not in FORBIDDEN_BUILTINS}
    safe.update({name: getattr(builtins, name) for name in _EXTRA_BUILTINS})
    safe["__import__"] = guarded_import
    return {
        "__builtins__": safe, "__name__": "candidate",
        "_getattr_": guarded_getattr, "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter, "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence, "_write_": guarded_write,
        "_inplacevar_": guarded_inplacevar,
        "_print_": PrintCollector,   # print() output is collected and dropped, never shown
    }
