"""Attacks on the sandbox through the real Docker engine and the real image.

"raw" runs skip the host gate AND the worker's restrictions (the payload is plain
Python running as the worker's code), so they prove the container on its own.
Every attack must end with the right verdict, leave the host unchanged and let
the next candidate run normally.
"""

from __future__ import annotations

import socket
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import docker
import pytest
import torch

from autoprune.sandbox import SandboxLimits, ScoringRequest, run_candidate
from autoprune.sandbox.codedir import staged_code_dir
from autoprune.sandbox.tiny import tiny_bundle
from sandbox_support import WANDA, folder_digest, require_docker_image, wanda_masks

pytestmark = pytest.mark.docker

LIMITS = SandboxLimits(timeout_s=90.0, memory_bytes=1 << 30, cpus=1.0, pids=64)
RAW = replace(LIMITS, raw=True)
SCORE = "\ndef score(W, X):\n    return W.abs() * X.norm\n"


def raw(body: str) -> str:
    return "import os, sys, socket, time\n" + textwrap.dedent(body) + SCORE


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    require_docker_image()
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def request_all(bundle):
    return ScoringRequest(sparsity={name: 0.5 for name in bundle.names})


@pytest.fixture(autouse=True)
def host_unchanged(bundle):
    """Every test: the bundle is byte-identical afterwards and no sandbox container is left."""
    before = folder_digest(bundle.folder)
    yield
    assert folder_digest(bundle.folder) == before
    left = docker.from_env().containers.list(all=True, filters={"label": "autoprune.sandbox"})
    assert left == []


def run(source, bundle, request, limits=LIMITS):
    return run_candidate(source, bundle, request, limits=limits)


def assert_next_candidate_runs(bundle, request):
    verdict = run(WANDA, bundle, request)
    assert verdict.status == "ok", verdict.message
    expected = wanda_masks(bundle, 0.5)
    assert all(torch.equal(verdict.masks[n], expected[n]) for n in bundle.names)


def test_wanda_candidate_matches_builtin_wanda(bundle, request_all):
    assert_next_candidate_runs(bundle, request_all)


def test_network_connection_never_arrives(bundle, request_all):
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    arrived = []

    def accept():
        try:
            arrived.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    payload = raw(f"""
        for host in ("127.0.0.1", "172.17.0.1", "10.0.0.1", {socket.gethostname()!r}):
            try:
                socket.create_connection((host, {port}), timeout=2).close()
                raise RuntimeError(f"BREACH reached {{host}}")
            except OSError:
                pass
        """)
    verdict = run(payload, bundle, request_all, RAW)
    thread.join()
    listener.close()
    assert verdict.status == "ok", verdict.message    # every connect failed inside
    assert arrived == []


def test_writes_outside_the_output_fail(bundle, request_all):
    payload = raw("""
        for path in ("/bundle/weights.safetensors", "/bundle/new", "/input/candidate.py",
                     "/etc/passwd", "/usr/lib/evil", "/opt/autoprune/code/autoprune/errors.py"):
            try:
                open(path, "a").write("pwned")
                raise RuntimeError(f"BREACH wrote {path}")
            except OSError:
                pass
        """)
    verdict = run(payload, bundle, request_all, RAW)
    assert verdict.status == "ok", verdict.message


def test_host_secrets_are_not_visible(bundle, request_all, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    payload = raw("""
        seen = repr(dict(os.environ)) + open("/proc/1/environ").read() + open("/proc/self/environ").read()
        raise RuntimeError("ENV " + seen)
        """)
    verdict = run(payload, bundle, request_all, RAW)
    assert verdict.status == "crashed"
    assert "OMP_NUM_THREADS" in verdict.message        # the environment did come out ...
    assert secret not in verdict.message               # ... without the host's key


def test_docker_socket_is_not_reachable(bundle, request_all):
    payload = raw("""
        for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                raise RuntimeError(f"BREACH connected to {path}")
            except OSError:
                pass
        """)
    assert run(payload, bundle, request_all, RAW).status == "ok"


def test_proc_and_sys_probing(bundle, request_all):
    payload = raw("""
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
        if os.getuid() == 0 or int(status["CapEff"].strip(), 16) != 0:
            raise RuntimeError("BREACH root or capabilities")
        if status["NoNewPrivs"].strip() != "1":
            raise RuntimeError("BREACH new privileges allowed")
        for path in ("/proc/sys/kernel/hostname", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                     "/proc/sysrq-trigger", "/sys/kernel/uevent_helper"):
            try:
                open(path, "w").write("1")
                raise RuntimeError(f"BREACH wrote {path}")
            except OSError:
                pass
        for path in ("/proc/kcore", "/dev/mem", "/proc/1/root/etc/shadow"):
            try:
                open(path, "rb").read(1)
                raise RuntimeError(f"BREACH read {path}")
            except OSError:
                pass
        """)
    verdict = run(payload, bundle, request_all, RAW)
    assert verdict.status == "ok", verdict.message


FORK_BOMB = raw("""
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """)
INFINITE_LOOP = "def score(W, X):\n    while True:\n        pass\n"


@pytest.fixture(scope="module")
def waits_for_the_clock(bundle, request_all):
    """The three attacks that end only at the wall-clock limit, run side by side (one container each):
    the module waits ~25 s for them instead of 65 s one after another. Every container is gone before
    the first test that asks for them runs (the `host_unchanged` check)."""
    runs = {"fork-bomb": (FORK_BOMB, replace(RAW, timeout_s=25.0)),
            "infinite-loop": (INFINITE_LOOP, replace(LIMITS, timeout_s=20.0)),
            "sleep": (raw("time.sleep(3600)"), replace(RAW, timeout_s=20.0))}
    staged_code_dir()              # once, first: its staging folder is named per process, not per thread
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run, source, bundle, request_all, limits)
                   for name, (source, limits) in runs.items()}
        return {name: future.result() for name, future in futures.items()}


def test_fork_bomb_is_contained(bundle, request_all, waits_for_the_clock):
    verdict = waits_for_the_clock["fork-bomb"]
    assert verdict.status in ("timeout", "crashed"), verdict.message
    assert_next_candidate_runs(bundle, request_all)


def test_memory_bomb_is_reported_as_out_of_memory(bundle, request_all):
    payload = raw("""
        hog = []
        while True:
            hog.append(bytearray(64 << 20))
        """)
    verdict = run(payload, bundle, request_all, replace(RAW, memory_bytes=512 << 20))
    assert verdict.status == "out-of-memory", verdict.message


def test_memory_bomb_through_the_gate(bundle, request_all):
    source = "import torch\ndef score(W, X):\n    big = torch.ones(200000, 100000)\n    return W\n"
    verdict = run(source, bundle, request_all, replace(LIMITS, memory_bytes=512 << 20))
    assert verdict.status == "out-of-memory", verdict.message


def test_infinite_loop_times_out(waits_for_the_clock):
    verdict = waits_for_the_clock["infinite-loop"]
    assert verdict.status == "timeout" and "20 s" in verdict.message


def test_sleep_past_the_timeout_is_killed(waits_for_the_clock):
    verdict = waits_for_the_clock["sleep"]
    assert verdict.status == "timeout"
    assert verdict.timings["total"] < 40


def test_gigabytes_of_stdout(bundle, request_all):
    payload = raw("""
        chunk = "x" * (1 << 20)
        for _ in range(4096):
            sys.stdout.write(chunk)
        """)
    verdict = run(payload, bundle, request_all, RAW)
    assert verdict.status == "too-much-output", verdict.message


def test_filling_the_output_tmpfs(bundle, request_all):
    payload = raw("""
        with open("/out/masks.bin", "wb") as f:
            while True:
                f.write(b"\\0" * (1 << 20))
        """)
    verdict = run(payload, bundle, request_all, RAW)
    assert verdict.status in ("too-much-output", "crashed"), verdict.message


def test_dunder_escape_is_rejected_statically(bundle, request_all):
    source = ("def score(W, X):\n    for c in ().__class__.__base__.__subclasses__():\n"
              "        pass\n    return score.__globals__\n")
    verdict = run(source, bundle, request_all)
    assert verdict.status == "rejected-static" and "__subclasses__" in verdict.message


def test_monkeypatched_mask_maker_is_caught(bundle, request_all):
    payload = raw("""
        import torch
        import autoprune.pruning.masks as masks
        fake = lambda scores, sparsity, **kw: torch.ones(scores.shape, dtype=torch.bool)
        masks.scores_to_mask = fake
        sys.modules["__main__"].scores_to_mask = fake     # the worker runs as __main__
        """)
    verdict = run(payload, bundle, request_all, RAW)
    assert verdict.status == "invalid-output" and "expected exactly" in verdict.message


@pytest.mark.parametrize("body, words", [
    ("return W * float('nan')", "NaN"),
    ("return W[:, :3]", "shape"),
    ("return 1.0", "torch.Tensor"),
])
def test_bad_scores_are_invalid_output(bundle, request_all, body, words):
    source = f"import torch\ndef score(W, X):\n    {body}\n"
    verdict = run(source, bundle, request_all)
    assert verdict.status == "invalid-output" and words in verdict.message


def test_killing_the_worker_or_the_supervisor(bundle, request_all):
    worker = run(raw("os.kill(os.getpid(), 9)"), bundle, request_all, RAW)
    assert worker.status == "crashed" and "-9" in worker.message
    supervisor = run(raw("os.kill(os.getppid(), 9)"), bundle, request_all, RAW)
    assert supervisor.status == "crashed"
    assert_next_candidate_runs(bundle, request_all)


def test_profile_mode(bundle):
    verdict = run(WANDA, bundle, ScoringRequest(mode="profile"))
    assert verdict.status == "ok", verdict.message
    assert set(verdict.profile["layers"]) == set(bundle.names)
    assert set(verdict.profile["blocks"]) == {"0", "1"}
    stats = verdict.profile["layers"][bundle.names[0]]
    assert stats["skewness"] > 0 and 0 <= stats["outlier_ratio"] < 1 and stats["q50"] >= 0
    assert "weight_skewness" in verdict.profile["blocks"]["0"]


def test_session_runs_candidates_on_containers_started_ahead(bundle, request_all):
    from autoprune.sandbox.session import SandboxSession

    expected = wanda_masks(bundle, 0.5)
    with SandboxSession(bundle, LIMITS) as session:
        rejected = session.run("import os\n" + SCORE, request_all)
        assert rejected.status == "rejected-static"
        for _ in range(2):
            verdict = session.run(WANDA, request_all)
            assert verdict.status == "ok", verdict.message
            assert all(torch.equal(verdict.masks[n], expected[n]) for n in bundle.names)
        nan = session.run("def score(W, X):\n    return W / 0 * 0\n", request_all)
        assert nan.status == "invalid-output"
