"""`autoprune-agent sandbox check`: hostile probes through the real container, one table.

Most probes run in raw mode (no gate, no restricted worker: plain Python in the
container) so they test the container's isolation on its own. A raw probe
raises `RuntimeError("BREACH ...")` when it gets through, which ends as a
"crashed" verdict carrying that word; when the isolation holds it defines a
normal score() and the run is "ok". Resource probes expect their own verdict.
"""

from __future__ import annotations

import os
import signal
import tempfile
import textwrap
import uuid
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Optional

from autoprune.sandbox.api import run_candidate
from autoprune.sandbox.bundle import ScoringBundle
from autoprune.sandbox.verdict import CandidateVerdict, SandboxLimits, ScoringRequest

_SCORE = "\ndef score(W, X):\n    return W.abs() * X.norm\n"


def raw_probe(body: str) -> str:
    """A raw payload: `body` (which raises BREACH on success), then a normal score()."""
    return "import os, sys, socket, time\n" + textwrap.dedent(body) + _SCORE


@dataclass(frozen=True)
class Probe:
    name: str
    what: str
    source: str
    expect: str                     # the verdict status meaning "the isolation held"
    raw: bool = True
    limits: Optional[dict] = None   # overrides of the check's limits
    backend: str = "docker"
    after: Optional[Callable[[], str]] = None   # a host-side check after the run: "" or BREACH ...


_MARKER = f"autoprune-probe-{uuid.uuid4().hex}"


def surviving_marker_processes(marker: str = _MARKER) -> str:
    """Kill and report host processes whose command line carries `marker` (none must survive)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(entry))
                    os.kill(int(entry), signal.SIGKILL)
        except OSError:
            continue
    return f"BREACH processes {found} outlived the run" if found else ""


_DEEP = "def score(W, X):\n    return W" + " + W" * 300 + "\n"
_ESCAPE_CHILD = raw_probe(f"""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)       # detached: the run does not wait for it
            os.execv("/bin/sleep", ["{_MARKER}", "300"])   # argv[0] names it
        os._exit(0)
    time.sleep(0.5)
    """)


PROBES = (
    Probe("network", "no network: TCP to the Docker bridge and the internet fails", raw_probe("""
        for host, port in (("172.17.0.1", 2375), ("1.1.1.1", 53), ("deb.debian.org", 80)):
            try:
                socket.create_connection((host, port), timeout=2).close()
                raise RuntimeError(f"BREACH connected to {host}:{port}")
            except OSError:
                pass
        """), "ok"),
    Probe("read-only", "root filesystem and input mounts are read-only", raw_probe("""
        for path in ("/etc/probe", "/usr/probe", "/bundle/probe", "/input/probe",
                     "/opt/autoprune/code/probe"):
            try:
                open(path, "w").write("x")
                raise RuntimeError(f"BREACH wrote {path}")
            except OSError:
                pass
        """), "ok"),
    Probe("secrets", "no host environment (API keys) inside", raw_probe("""
        leaked = [k for k in os.environ if any(w in k.upper() for w in ("KEY", "TOKEN", "SECRET"))]
        if leaked:
            raise RuntimeError(f"BREACH environment has {leaked}")
        """), "ok"),
    Probe("docker-socket", "the Docker socket is not reachable", raw_probe("""
        for path in ("/var/run/docker.sock", "/run/docker.sock"):
            if os.path.exists(path):
                raise RuntimeError(f"BREACH {path} is visible")
        """), "ok"),
    Probe("privileges", "non-root, no capabilities, no-new-privileges", raw_probe("""
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
        if os.getuid() == 0 or int(status["CapEff"].strip(), 16) or status["NoNewPrivs"].strip() != "1":
            raise RuntimeError("BREACH root, capabilities or new privileges allowed")
        """), "ok"),
    Probe("fork-bomb", "process count is capped", raw_probe("""
        children = 0
        try:
            for _ in range(400):
                if os.fork() == 0:
                    time.sleep(3)
                    os._exit(0)
                children += 1
        except OSError:
            pass
        if children >= 400:
            raise RuntimeError(f"BREACH forked {children} processes")
        """), "ok"),
    Probe("memory-bomb", "memory is capped (OOM kill detected)", raw_probe("""
        hog = []
        while True:
            hog.append(bytearray(64 << 20))
        """), "out-of-memory"),
    Probe("sleep", "the wall-clock timeout kills", raw_probe("time.sleep(3600)"), "timeout",
          limits={"timeout_s": 20.0}),
    Probe("stdout-flood", "output floods are stopped", raw_probe("""
        chunk = "x" * (1 << 20)
        while True:
            sys.stdout.write(chunk)
        """), "too-much-output"),
    Probe("gate", "the static gate refuses imports of os / dunder access", "import os" + _SCORE,
          "rejected-static", raw=False),
    Probe("re-export", "names torch re-exports (torch.os, torch.sys ...) are off the allow-list",
          "from torch import os" + _SCORE, "rejected-static", raw=False),
    Probe("format-string", "format strings cannot reach attributes ('{0.__class__}'.format)",
          "def score(W, X):\n    s = '{0.__class__}'.format(W)\n    return W.abs()\n",
          "rejected-static", raw=False),
    Probe("attribute-swap", "a candidate cannot set attributes (e.g. replace .detach)",
          "def score(W, X):\n    s = W.abs()\n    s.detach = lambda: W\n    return s\n",
          "rejected-static", raw=False),
    Probe("deep-expression", "a 300-term chained expression is a clear rejection, not a crash",
          _DEEP, "rejected-static", raw=False),
    Probe("module-value", "a module reached through a value (torch.functional) is blocked at run "
          "time", "import torch\ndef score(W, X):\n    m = [torch][0].functional\n    return W\n",
          "crashed", raw=False),
    Probe("process:network", "process backend: a network namespace without interfaces",
          raw_probe("""
        if [name for _, name in socket.if_nameindex() if name != "lo"]:
            raise RuntimeError(f"BREACH interfaces {socket.if_nameindex()}")
        for host, port in (("1.1.1.1", 53), ("127.0.0.1", 22)):
            try:
                socket.create_connection((host, port), timeout=2).close()
                raise RuntimeError(f"BREACH connected to {host}:{port}")
            except OSError:
                pass
        """), "ok", backend="process"),
    Probe("process:descendants", "process backend: a setsid() grandchild dies with the run",
          _ESCAPE_CHILD, "ok", backend="process", after=surviving_marker_processes),
)


@dataclass
class ProbeResult:
    probe: Probe
    verdict: CandidateVerdict
    breach: str = ""               # what the host-side check after the run found

    @property
    def holds(self) -> bool:
        return (self.verdict.status == self.probe.expect and "BREACH" not in self.verdict.message
                and not self.breach)


def run_self_check(bundle: ScoringBundle, limits: SandboxLimits,
                   on_result: Callable[[ProbeResult], None] = lambda r: None) -> list[ProbeResult]:
    request = ScoringRequest(sparsity={name: 0.5 for name in bundle.names})
    results = []
    for probe in PROBES:
        probe_limits = replace(limits, raw=probe.raw, **(probe.limits or {}))
        with warnings.catch_warnings():   # the process backend's warning is the point here
            warnings.simplefilter("ignore")
            verdict = run_candidate(probe.source, bundle, request, backend=probe.backend,
                                    limits=probe_limits)
        results.append(ProbeResult(probe, verdict, probe.after() if probe.after else ""))
        on_result(results[-1])
    return results


def check_limits() -> SandboxLimits:
    """Small limits: the probes must trip them fast on a 2-core machine."""
    return SandboxLimits(timeout_s=60.0, memory_bytes=1 << 30, cpus=1.0, pids=64)


def self_check(on_result: Callable[[ProbeResult], None] = lambda r: None) -> list[ProbeResult]:
    """Build a tiny bundle and run every probe through the Docker backend."""
    from autoprune.sandbox.docker_backend import DEFAULT_IMAGE, docker_client, require_image
    from autoprune.sandbox.tiny import tiny_bundle

    require_image(docker_client(), DEFAULT_IMAGE)
    with tempfile.TemporaryDirectory(prefix="autoprune-check-") as tmp:
        return run_self_check(tiny_bundle(tmp), check_limits(), on_result)
