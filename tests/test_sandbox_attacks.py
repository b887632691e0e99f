"""Attacks on the allow-list gate, the run-time guards and the process backend's isolation.

Written by reading the code as an attacker would. Each attack class ends with the
right verdict: `rejected-static` where the gate can see it (for both backends:
the gate runs before either), `crashed` with a GuardError message where only the
run-time guard can see it (run for real in the Docker container AND the process
backend), `ok` where a raw payload probes the process backend's namespaces and
finds nothing. Every test checks that the host is unchanged (bundle bytes, a
canary file the attacks aim at), that no traceback or raw escape byte comes out,
and the last tests prove the next normal candidate still runs on both backends.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from autoprune.agent.expression import CandidateFormatError, candidate_from_expression_reply
from autoprune.errors import SandboxError
from autoprune.sandbox import SandboxLimits, ScoringRequest, run_candidate
from autoprune.sandbox.gate import check_source
from autoprune.sandbox.policy import GuardError, candidate_globals, compile_candidate
from autoprune.sandbox.process_backend import (
    WeakSandboxWarning, isolation_warning, namespace_prefix,
)
from autoprune.sandbox.selfcheck import surviving_marker_processes
from autoprune.sandbox.tiny import tiny_bundle
from autoprune.sandbox.worker import WorkerFailure, checked_scores, fresh_tensor
from sandbox_support import WANDA, folder_digest, wanda_masks

LIMITS = SandboxLimits(timeout_s=90.0, memory_bytes=1 << 30, cpus=1.0, pids=64)
BACKENDS = ("docker", "process")
CANARY_TEXT = "canary: the host must keep this\n"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("canary") / "canary.txt"
    path.write_text(CANARY_TEXT)
    return path


@pytest.fixture(scope="module")
def request_all(bundle):
    return ScoringRequest(sparsity={name: 0.5 for name in bundle.names})


@pytest.fixture(scope="module")
def docker_session(bundle):
    """One warm-container session for every Docker run here (containers start ahead)."""
    from autoprune.sandbox.build import build_image
    from autoprune.sandbox.session import SandboxSession

    try:
        build_image(step=lambda message: None)
    except SandboxError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Docker attacks: {exc}")
        pytest.skip(str(exc))
    with SandboxSession(bundle, LIMITS) as session:
        yield session


@pytest.fixture(autouse=True)
def host_unchanged(bundle, canary):
    before = folder_digest(bundle.folder)
    yield
    assert folder_digest(bundle.folder) == before
    assert canary.read_text() == CANARY_TEXT


def run_on(backend, source, bundle, request, request_fixture, limits=LIMITS):
    if backend == "docker":
        return request_fixture.getfixturevalue("docker_session").run(source, request)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakSandboxWarning)
        return run_candidate(source, bundle, request, backend="process", limits=limits)


def assert_clean(message: str, candidate_traceback: bool = False) -> None:
    """What reaches a terminal or an LLM: no raw control byte, and no traceback except the
    candidate's own (a crash report for the LLM), which never shows the guards' frames."""
    if candidate_traceback:
        assert "policy.py" not in message, message
    else:
        assert "Traceback" not in message, message
    assert not any(ord(c) < 32 and c not in "\n\t" for c in message), repr(message)
    assert "\x7f" not in message and "\x9b" not in message


def assert_rejected(source: str, *words: str, backends=BACKENDS, bundle=None, request=None):
    """Refused by the gate (checked directly and through run_candidate for each backend)."""
    started = time.perf_counter()
    gate = check_source(source)
    assert time.perf_counter() - started < 5.0
    assert not gate.ok, source
    for word in words:
        assert word in gate.message, gate.message
    assert_clean(gate.message)
    for backend in backends if bundle is not None else ():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WeakSandboxWarning)
            verdict = run_candidate(source, bundle, request, backend=backend, limits=LIMITS)
        assert verdict.status == "rejected-static" and verdict.message == gate.message


def _exec(source: str) -> dict:
    code, errors = compile_candidate(source)
    assert not errors, errors
    namespace = candidate_globals()
    exec(code, namespace)  # noqa: S102 - test-authored attacks under the policy
    return namespace


# ---- attack classes the static gate sees (same verdict on both backends) -------------------------

@pytest.mark.parametrize("body, words", [
    ("from torch import os\nos.remove(CANARY)\n", ["'torch.os' is not allowed", "torch.abs"]),
    ("from torch import sys, builtins\n", ["'torch.sys' is not allowed"]),
    ("import torch\nm = torch.os\n", ["'torch.os' is not allowed"]),
    ("import torch as t\nb = t.builtins.open\n", ["'torch.builtins' is not allowed"]),
    ("import torch\nx = torch.importlib.import_module('os')\n", ["'torch.importlib'"]),
    ("import torch\nx = torch.inspect.stack()\n", ["'torch.inspect'"]),
    ("from torch import glob\n", ["'torch.glob'"]),
    ("import torch.nn.functional as F\nnp = F.np\n", ["'torch.nn.functional.np' is not allowed"]),
    ("from torch.nn.functional import importlib\n", ["'torch.nn.functional.importlib'"]),
    ("import torch\nx = torch.nn.functional.np.load\n", ["'torch.nn.functional.np'"]),
    ("import torch\nx = torch.nn.modules\n", ["'torch.nn.modules' is not allowed"]),
    ("from torch import *\n", ["'torch.*' is not allowed"]),
    ("from . import worker\n", ["import of '.' is not allowed"]),
    ("import torch\nx = torch.ops.aten\n", ["'torch.ops'"]),
    ("import torch\nx = torch._C\n", ["\"_C\"", "'_'"]),
    ("import torch\nx = torch.from_file(CANARY)\n", ["'torch.from_file'"]),
    ("import torch\nx = torch.utils.data\n", ["'torch.utils'"]),
    ("import torch\nx = torch.classes\n", ["'torch.classes'"]),
    ("import torch\nx = torch.hub.load\n", ["'torch.hub'"]),
    ("import torch\ntorch.load(CANARY)\n", ["'torch.load'"]),
    ("import math\nx = math.sys\n", ["'math.sys' is not allowed"]),
    ("import torch.nn as nn\nlayer = nn.Linear(2, 2)\n", ["'torch.nn.Linear' is not allowed"]),
])
def test_re_exported_modules_are_off_the_allow_list(body, words, bundle, request_all, canary):
    source = body.replace("CANARY", repr(str(canary))) + WANDA
    assert_rejected(source, *words, bundle=bundle, request=request_all)


@pytest.mark.parametrize("body, words", [
    ("s = '{0.__class__}'.format(W)", ["'.format' is not allowed"]),
    ("s = str.format('{0.T}', W)", ["'.format'"]),
    ("s = '{a.T}'.format_map({'a': W})", ["'.format_map'"]),
    ("s = format(W, '')", ["'format' is forbidden", "f-strings"]),
    ("s = f\"{W:{'>10'}}\"", ["computed f-string format specs are forbidden"]),
    ("s = '%(a)s' % {'a': W}", ["'%' formatting of strings is forbidden"]),
    ("s = f'{W}' % ()", ["'%' formatting"]),
])
def test_format_strings_cannot_reach_attributes(body, words, bundle, request_all):
    source = f"def score(W, X):\n    {body}\n    return W.abs()\n"
    assert_rejected(source, *words, bundle=bundle, request=request_all)
    assert_rejected("import string\n" + WANDA, "import of 'string' is not allowed")


@pytest.mark.parametrize("body", [
    "s = W.abs()\n    s.detach = lambda: W\n    return s",
    "s = W.abs()\n    s.clone = s.abs\n    return s",
    "X.norm = W.sum(0)\n    return W.abs() * X.norm",
    "del W.abs\n    return W",
    "torch.abs = torch.neg\n    return W",
    "torch.nn.functional.relu = torch.neg\n    return W",
])
def test_attribute_stores_are_refused(body, bundle, request_all):
    source = f"import torch\ndef score(W, X):\n    {body}\n"
    assert_rejected(source, "is forbidden (no changing of objects or modules)", bundle=bundle,
                    request=request_all)


@pytest.mark.parametrize("expression", [
    "W" + " + W" * 250,
    "-" * 5000 + "W",
    "W" + ".abs()" * 2000,
    "[" * 150 + "W" + "]" * 150,
    "(" * 300 + "W" + ")" * 300,
])
def test_deep_expressions_are_a_clear_rejection(expression, bundle, request_all):
    source = f"def score(W, X):\n    return {expression}\n"
    gate = check_source(source)     # must return, never raise (RecursionError, MemoryError)
    assert not gate.ok and "Line" in gate.message
    assert_rejected(source, bundle=bundle, request=request_all)
    try:     # the agent's expression parser: the same bound, never an exception of its own
        salvaged = candidate_from_expression_reply(expression)
    except CandidateFormatError as exc:
        assert "Write ONE Python expression" in str(exc)
    else:    # it salvaged a shorter prefix (its rule for replies cut mid-expression)
        assert check_source(salvaged).ok


def test_too_many_statements_is_a_clear_rejection(bundle, request_all):
    source = WANDA + "s = 1\n" * 10_000
    assert_rejected(source, "syntax nodes", bundle=bundle, request=request_all)


@pytest.mark.parametrize("body, words", [
    ("g = (x for x in [W])\n    f = g.gi_frame", ["'.gi_frame' is not allowed"]),
    ("g = (x for x in [W])\n    f = g.gi_code", ["'.gi_code'"]),
    ("def gen():\n        yield W\n    f = gen()", ["'yield' is forbidden"]),
    ("try:\n        1 / 0\n    except Exception as e:\n        t = e.__traceback__", ["__traceback__"]),
    ("try:\n        1 / 0\n    except Exception as e:\n        e = e.with_traceback(None)",
     ["'.with_traceback'"]),
    ("t = W.tb_frame.f_back.f_globals", ["'.tb_frame'"]),
    ("t = W.f_back", ["'.f_back'"]),
    ("t = W.cr_frame", ["'.cr_frame'"]),
])
def test_frames_generators_and_tracebacks_are_unreachable(body, words, bundle, request_all):
    source = f"def score(W, X):\n    {body}\n    return W.abs()\n"
    assert_rejected(source, *words, bundle=bundle, request=request_all)


@pytest.mark.parametrize("expression, words", [
    ("W.untyped_storage()", ["'.untyped_storage' is not allowed"]),
    ("W.storage()", ["'.storage'"]),
    ("W.data_ptr()", ["'.data_ptr'"]),
    ("W.numpy()", ["'.numpy'"]),
    ("W.pin_memory()", ["'.pin_memory'"]),
    ("W.share_memory_()", ["'.share_memory_'"]),
    ("W.register_hook(print)", ["'.register_hook'"]),
    ("W.grad_fn", ["'.grad_fn'"]),
    ("W.apply_(abs)", ["'.apply_'"]),
    ("W.as_strided((9, 9), (1, 1))", ["'.as_strided'"]),
    ("W.set_()", ["'.set_'"]),
    ("W.resize_(10 ** 6)", ["'.resize_'"]),
    ("W.backward()", ["'.backward'"]),
    ("W.__dlpack__()", ["__dlpack__"]),
    ("torch.sum.__module__", ["__module__"]),
    ("torch.abs.__self__", ["__self__"]),
    ("W.abs.__self__", ["__self__"]),
    ("torch.empty_like(W)", ["'torch.empty_like' is not allowed"]),
    ("torch.Tensor._make_subclass", ["_make_subclass"]),
])
def test_tensor_internals_are_unreachable(expression, words, bundle, request_all):
    source = f"import torch\ndef score(W, X):\n    return {expression}\n"
    assert_rejected(source, *words, bundle=bundle, request=request_all)


@pytest.mark.parametrize("body, words", [
    ("t = type(W)", ["'type' is forbidden", "isinstance"]),
    ("t = getattr(W, 'abs')", ["'getattr' is forbidden"]),
    ("t = hasattr(W, 'abs')", ["'hasattr' is forbidden"]),
    ("t = vars(X)", ["'vars' is forbidden"]),
    ("t = open('/etc/passwd')", ["'open' is forbidden"]),
    ("t = __import__('os')", ["__import__"]),
    ("t = issubclass(int, object)", ["'issubclass' is forbidden"]),
    ("t = object()", ["'object' is forbidden"]),
    ("t = super()", ["'super' is forbidden"]),
    ("t = memoryview(b'')", ["'memoryview' is forbidden"]),
    ("breakpoint()", ["'breakpoint' is forbidden"]),
    ("t = isinstance(W, torch._C.TensorBase)", ["_C"]),
    ("f = lambda m=torch.os: m", ["'torch.os' is not allowed"]),
    ("t = (m := torch.sys)", ["'torch.sys' is not allowed"]),
    ("match W:\n        case torch.Tensor(untyped_storage=s):\n            pass",
     ["Match statements are not allowed"]),
    ("@torch.os.system\n    def f():\n        pass", ["'torch.os' is not allowed"]),
    ("global torch", ["'global' is forbidden"]),
])
def test_builtins_and_syntax_tricks(body, words, bundle, request_all):
    source = f"import torch\ndef score(W, X):\n    {body}\n    return W.abs()\n"
    assert_rejected(source, *words, bundle=bundle, request=request_all)


@pytest.mark.parametrize("source", [
    "import os\x1b[2J\n" + WANDA,
    "GROUP = '\x1b]52;c;b3duZWQ=\x07'\n" + WANDA,
    "import torch\ndef score(W, X):\n    return torch.\u202eabs(W)\n",
    "import torch\ndef score(W, X):\n    return W.\u00e9x\n",
])
def test_rejections_carry_no_escape_bytes(source, bundle, request_all):
    """Rejection messages quote the source: terminal escapes in it never come out raw."""
    assert_rejected(source, bundle=bundle, request=request_all)


def test_every_name_the_agent_writes_still_passes():
    """The allow-list is generous: the seeds, templates and expression wrapper pass."""
    from autoprune.agent.archive import SEED_SOURCES

    for source in SEED_SOURCES.values():
        assert check_source(source).ok, source
    wrapped = candidate_from_expression_reply("W.abs() * X.norm.sqrt() + torch.log1p(X.var)")
    assert check_source(wrapped).ok
    src = ("import math\nimport torch\nimport torch.nn.functional as F\nfrom torch import linalg\n"
           "from torch.nn import functional\n\ndef score(W, X):\n"
           "    A = W.abs()\n    r = A / (A.sum(dim=1, keepdim=True) + torch.finfo(A.dtype).eps)\n"
           "    q = torch.quantile(A.flatten()[:100], 0.5)\n    k = A.topk(2, dim=1).values.mean()\n"
           "    v = A.kthvalue(1, dim=1).values.unsqueeze(1)\n    n = linalg.vector_norm(A, dim=0)\n"
           "    s = F.softmax(A, dim=1) * functional.relu(A - v) + r * X.norm.sqrt() + n\n"
           "    s[0, 0] = s.max()\n    rows, cols = s.shape\n    msg = f'{rows}x{cols} {q:.3f}'\n"
           "    if msg.startswith('x'):\n        s = s * X.hess_diag\n"
           "    return (s + k * math.log(2.0) + torch.pi).clamp_min(0).to(torch.float32)\n")
    assert check_source(src).ok, check_source(src).message
    acts = torch.randn(16, 6)
    from autoprune.pruning.stats import ActivationStats

    stats = ActivationStats(norm=acts.norm(dim=0), sq_mean=acts.pow(2).mean(0), mean=acts.mean(0),
                            var=acts.var(0), max_abs=acts.abs().amax(0))
    assert _exec(src)["score"](torch.randn(4, 6), stats).shape == (4, 6)
    # An uncollected field is no None to test for: reading it is refused, with the gate's words.
    with pytest.raises(GuardError, match="did not collect `X.gram`"):
        _exec("def score(W, X):\n    return X.gram\n")["score"](torch.randn(4, 6), stats)


# ---- what only the run-time guards can see: in process, then through both backends -------------

@pytest.mark.parametrize("source", [
    "import torch\nm = [torch][0].functional\n",                  # torch.functional re-exports np
    "import torch\nm = (lambda t=[torch][0]: t.functional)()\n",  # lambda default argument
    "import torch\nm = (t := [torch][0]).functional\n",           # walrus
    "import torch\nf = [torch.nn][0].functional\nm = [f][0].values\n",
    "s = ['{0.T}'][0]\nm = [s][0].T\n",
    "fmt = '%s'\nm = fmt % 1\n",
    "m = [str][0].upper\n",                                       # attributes of a type
    "g = [(x for x in [1])][0]\nm = [g][0].values\n",
    "import torch\nm = [torch.sum][0].values\n",
])
def test_run_time_guards_refuse_what_the_text_hides(source):
    with pytest.raises(GuardError) as info:
        _exec(source)
    assert "not allowed" in str(info.value) or "forbidden" in str(info.value)


def test_run_time_import_hook_checks_from_names():
    guarded = candidate_globals()["__builtins__"]["__import__"]
    for name, fromlist in (("torch", ("os",)), ("torch", ("*",)), ("torch.nn.functional", ("np",)),
                           ("os", ()), ("torch", ("_C",))):
        with pytest.raises(GuardError):
            guarded(name, fromlist=fromlist)
    assert guarded("torch", fromlist=("abs", "linalg")) is torch


def test_print_cannot_redirect_output():
    """print(file=...) would call the object's own .write: it is dropped instead."""
    namespace = _exec("def score(W, X):\n    print(W, file=X, flush=True)\n    return W\n")
    written = []
    target = type("Sink", (), {"write": lambda self, text: written.append(text)})()
    assert torch.equal(namespace["score"](torch.ones(1), target), torch.ones(1))
    assert written == []


def test_returned_tensor_is_a_plain_fresh_copy():
    """A subclass is refused; a plain tensor with swapped methods is copied by torch itself."""
    class Shifty(torch.Tensor):
        pass

    with pytest.raises(WorkerFailure) as info:
        fresh_tensor(torch.ones(2, 2).as_subclass(Shifty), "layer")
    assert info.value.kind == "invalid-output" and "plain torch.Tensor" in str(info.value)
    scores = torch.ones(2, 2)
    scores.detach = lambda: torch.zeros(2, 2)        # what a raw payload could do
    scores.clone = lambda *a, **k: torch.zeros(2, 2)
    fresh = fresh_tensor(scores, "layer")
    assert type(fresh) is torch.Tensor and torch.equal(fresh, torch.ones(2, 2))
    assert fresh.data_ptr() != scores.data_ptr() and "detach" not in vars(fresh)
    with pytest.raises(WorkerFailure) as info:
        checked_scores(lambda W, X: torch.ones(2, 2).to_sparse(), torch.ones(2, 2), None, "layer")
    assert "dense real tensor" in str(info.value)


def test_worker_hands_the_candidate_a_copy_of_the_weights():
    weight = torch.ones(2, 2)
    checked_scores(lambda W, X: W.mul_(0), weight, None, "layer")
    assert torch.equal(weight, torch.ones(2, 2))


RUNTIME_ATTACKS = {
    "module-value": ("import torch\ndef score(W, X):\n    m = [torch][0].functional\n"
                     "    return W.abs()\n", ["GuardError", "'torch.functional' is not allowed",
                                              "line 3"]),
    "percent-format": ("def score(W, X):\n    fmt = '%s'\n    s = fmt % W\n    return W.abs()\n",
                       ["GuardError", "'%' formatting"]),
    "recursion-bomb": ("def f(n):\n    return f(n + 1)\n\ndef score(W, X):\n    return f(0)\n",
                       ["RecursionError"]),
    "escape-bytes": ("def score(W, X):\n    raise ValueError('\\x1b[2J\\x1b]52;c;b3duZWQ=\\x07 fake')\n",
                     ["ValueError", "fake"]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", sorted(RUNTIME_ATTACKS))
def test_run_time_attacks_end_as_crashed_verdicts(attack, backend, bundle, request_all, request):
    source, words = RUNTIME_ATTACKS[attack]
    assert check_source(source).ok      # the gate cannot see these: only the guards can
    verdict = run_on(backend, source, bundle, request_all, request)
    assert verdict.status == "crashed", verdict.message
    for word in words:
        assert word in verdict.message, verdict.message
    assert_clean(verdict.message, candidate_traceback=attack == "escape-bytes")
    assert len(verdict.message) < 10_000


# ---- the process backend's OS isolation ---------------------------------------------------------

def _namespaces_or_skip():
    prefix, why = namespace_prefix()
    if not prefix:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root: the namespaces must work ({why})")
        pytest.skip(f"no namespaces here: {why}")


def test_process_backend_has_no_network_and_no_view_of_other_processes(
        bundle, request_all, monkeypatch):
    _namespaces_or_skip()
    monkeypatch.setenv("AUTOPRUNE_ATTACK_SECRET", "sk-attack-secret")
    server = socket.create_server(("127.0.0.1", 0))
    port, accepted = server.getsockname()[1], []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    payload = f"""import os, socket
for host, port in (("127.0.0.1", {port}), ("1.1.1.1", 53)):
    try:
        socket.create_connection((host, port), timeout=2).close()
        raise RuntimeError(f"BREACH connected to {{host}}:{{port}}")
    except OSError:
        pass
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        if b"sk-attack-secret" in open(f"/proc/{{pid}}/environ", "rb").read():
            raise RuntimeError(f"BREACH read the host's environment through /proc/{{pid}}")
    except OSError:
        pass
if os.path.exists("/proc/{os.getpid()}/environ") and {os.getpid()} > 5:
    raise RuntimeError("BREACH the host process is visible")
""" + WANDA
    verdict = run_on("process", payload, bundle, request_all, None, replace(LIMITS, raw=True))
    server.close()
    assert verdict.status == "ok", verdict.message
    assert accepted == []


def test_process_backend_kills_a_setsid_grandchild(bundle, request_all):
    _namespaces_or_skip()
    marker = f"autoprune-attack-{os.getpid()}-{time.time_ns()}"
    payload = f"""import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.execv("/bin/sleep", ["{marker}", "300"])
    os._exit(0)
time.sleep(0.5)
""" + WANDA
    verdict = run_on("process", payload, bundle, request_all, None, replace(LIMITS, raw=True))
    assert verdict.status == "ok", verdict.message
    time.sleep(0.2)
    assert surviving_marker_processes(marker) == ""


def test_process_backend_warns_what_it_cannot_promise():
    """The warning (emitted on every run: tests/test_sandbox_process.py) says what holds here."""
    prefix, why = namespace_prefix()
    text = isolation_warning()
    assert "WEAKER" in text and "filesystem" in text
    assert ("namespaced" in text and "NOT" not in text) if prefix else ("NOT namespaced" in text
                                                                        and why in text)


# ---- after every attack, a normal candidate runs normally ---------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_next_candidate_runs_after_the_attacks(backend, bundle, request_all, request):
    verdict = run_on(backend, WANDA, bundle, request_all, request)
    assert verdict.status == "ok", verdict.message
    expected = wanda_masks(bundle, 0.5)
    assert all(torch.equal(verdict.masks[n], expected[n]) for n in bundle.names)
