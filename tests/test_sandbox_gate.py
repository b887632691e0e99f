"""The static gate and the runtime guards of the restricted policy (no Docker needed)."""

from __future__ import annotations

import pytest
import torch

from autoprune.sandbox.gate import check_source
from autoprune.sandbox.policy import (
    MAX_SOURCE_BYTES, GuardError, candidate_globals, compile_candidate,
)

WANDA = "import torch\n\ndef score(W, X):\n    return W.abs() * X.norm\n"


def test_wanda_and_ordinary_torch_code_pass():
    src = ("import torch, math\nimport torch.nn.functional as F\nGROUP = 'layer'\n\n"
           "def score(W, X):\n    s = W.abs()\n    s *= X.norm.sqrt().clamp_min(1e-8)\n"
           "    rows, cols = s.shape\n    for i in range(2):\n        s = s + math.log(2)\n"
           "    return F.relu(s) + [x for x in (1.0,)][0]\n")
    assert check_source(WANDA).ok
    result = check_source(src)
    assert result.ok and result.group == "layer", result.message


@pytest.mark.parametrize("source, line, words", [
    ("import os\ndef score(W, X):\n    return W\n", 1, ["import of 'os' is not allowed", "torch"]),
    ("import torch\nimport subprocess\ndef score(W, X):\n    return W\n", 2, ["'subprocess'"]),
    ("from ctypes import CDLL\ndef score(W, X):\n    return W\n", 1, ["'ctypes'"]),
    ("def score(W, X):\n    return open('/etc/passwd')\n", 2, ["'open' is forbidden", "files"]),
    ("def score(W, X):\n    return eval('W')\n", 2, ["'eval' is forbidden"]),
    ("def score(W, X):\n    exec('1')\n    return W\n", 2, ["'exec' is forbidden"]),
    ("def score(W, X):\n    return getattr(W, 'abs')()\n", 2, ["'getattr' is forbidden", "X.norm"]),
    ("def score(W, X):\n    return globals()\n", 2, ["'globals' is forbidden"]),
    ("def score(W, X):\n    c = compile('1', 'x', 'eval')\n    return W\n", 2, ["'compile'"]),
    ("def score(W, X):\n    return ().__class__.__bases__[0].__subclasses__()\n", 2,
     ["__subclasses__", "public torch API"]),
    ("def score(W, X):\n    return score.__globals__\n", 2, ["__globals__"]),
    ("import torch\ndef score(W, X):\n    torch.save(W, 'x')\n    return W\n", 3, ["'torch.save' is not allowed", "torch.abs"]),
    ("import torch\ndef score(W, X):\n    return torch.load('x')\n", 3, ["'torch.load' is not allowed"]),
    ("import torch\ndef score(W, X):\n    return W.numpy()\n", 3, ["'.numpy'"]),
    ("import torch\ndef score(W, X):\n    torch.abs = lambda t: t\n    return W\n", 3,
     ["'torch.abs'", "forbidden"]),
    ("class A:\n    pass\ndef score(W, X):\n    return W\n", 1, ["class definitions"]),
    ("def score(W, X)\n    return W\n", 1, ["syntax error"]),
    ("def scorer(W, X):\n    return W\n", 1, ["def score(W, X)"]),
    ("GROUP = 'column'\ndef score(W, X):\n    return W\n", None, ["GROUP"]),
])
def test_rejections_name_the_line_and_the_fix(source, line, words):
    result = check_source(source)
    assert not result.ok
    if line is not None:
        assert f"Line {line}:" in result.message, result.message
    for word in words:
        assert word in result.message, result.message


def test_size_limit():
    result = check_source(WANDA + "#" * MAX_SOURCE_BYTES)
    assert not result.ok and "limit" in result.message


def _exec(source):
    code, errors = compile_candidate(source)
    assert not errors, errors
    namespace = candidate_globals()
    exec(code, namespace)
    return namespace


def test_restricted_execution_computes_like_plain_python():
    namespace = _exec("import torch\ndef score(W, X):\n    s = W.abs()\n    s += 1\n    print(s)\n"
                      "    s[0, 0] = 0.0\n    return s\n")
    out = namespace["score"](torch.ones(2, 2), None)
    assert torch.equal(out, torch.tensor([[0.0, 2.0], [2.0, 2.0]]))


@pytest.mark.parametrize("body", [
    "import torch\nm = torch.os\n",                       # a module torch imported, not allowed
    "import torch\ntorch.linalg.norm2 = 1\n",             # monkeypatching a module
    "import torch\nx = __import__('os')\n".replace("__import__", "__imp" + "ort__"),
])
def test_runtime_guards_stop_what_slips_past_the_text(body):
    code, errors = compile_candidate(body)
    if errors:  # stopped statically: fine too
        return
    with pytest.raises((GuardError, NameError, AttributeError)):
        exec(code, candidate_globals())


def test_guarded_import_refuses_modules_at_run_time():
    guarded = candidate_globals()["__builtins__"]["__import__"]
    assert guarded("math").sqrt(4) == 2
    with pytest.raises(GuardError):
        guarded("os")
