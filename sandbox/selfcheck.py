"""`autoprune-agent sandbox check`: hostile probes through the real container, one table.

Most probes run in raw mode (no gate, no restricted worker: plain Python in the
container) so they test the container's isolation on its own. A raw probe
raises `RuntimeError("BREACH ...")` when it gets through, which ends as a
"crashed" verdict carrying that word; when the isolation holds it defines a
normal score() and the run is "ok". Resource probes expect their own verdict.
"""

from __future__ import annotations

import tempfile
import textwrap
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
)


@dataclass
class ProbeResult:
    probe: Probe
    verdict: CandidateVerdict

    @property
    def holds(self) -> bool:
        return self.verdict.status == self.probe.expect and "BREACH" not in self.verdict.message


def run_self_check(bundle: ScoringBundle, limits: SandboxLimits,
                   on_result: Callable[[ProbeResult], None] = lambda r: None) -> list[ProbeResult]:
    request = ScoringRequest(sparsity={name: 0.5 for name in bundle.names})
    results = []
    for probe in PROBES:
        probe_limits = replace(limits, raw=probe.raw, **(probe.limits or {}))
        verdict = run_candidate(probe.source, bundle, request, limits=probe_limits)
        results.append(ProbeResult(probe, verdict))
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
