"""The process backend: for machines without Docker, only on explicit request. WEAKER.

The same supervisor and worker run as a subprocess in a new session with an
empty environment, resource limits (RLIMIT_AS, CPU, NPROC, FSIZE, NOFILE, CORE)
and a wall-clock timeout that kills the whole process group. There is no
network, filesystem or PID isolation: the static gate and the restricted
worker are what stand between a candidate and the host.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from autoprune.sandbox import protocol as P
from autoprune.sandbox.transport import RawRun, read_supervisor_stream
from autoprune.sandbox.verdict import SandboxLimits

WARNING = ("sandbox backend 'process' is WEAKER than Docker: no network, filesystem or PID "
           "isolation; only the static gate, the restricted worker and rlimits protect this machine")


class WeakSandboxWarning(UserWarning):
    pass


def _limit_resources(limits: SandboxLimits, cap: int):
    def apply() -> None:
        os.setsid()
        # torch reserves far more address space than it uses: RLIMIT_AS is memory plus headroom.
        memory = limits.memory_bytes + (2 << 30)
        cpu = int(limits.timeout_s * max(1.0, limits.cpus)) + 5
        for which, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                             (resource.RLIMIT_FSIZE, cap), (resource.RLIMIT_NOFILE, 256),
                             (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, limits.pids * 8)):
            resource.setrlimit(which, (value, value))
    return apply


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_in_process(bundle: Path, inputs: Path, out: Path, code: Path, limits: SandboxLimits,
                   cap: int) -> RawRun:
    warnings.warn(WARNING, WeakSandboxWarning, stacklevel=3)
    run = RawRun()
    args = ["--bundle", str(bundle), "--input", str(inputs), "--out", str(out), "--code", str(code),
            "--stdout-cap", str(limits.stdout_bytes)] + (["--raw"] if limits.raw else [])
    argv = P.bootstrap_argv(sys.executable, str(code), "autoprune.sandbox.supervisor", args)
    threads = str(max(1, limits.threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=str(out), close_fds=True,
                            env={"OMP_NUM_THREADS": threads, "HOME": str(out)},
                            preexec_fn=_limit_resources(limits, cap))
    chunks = iter(lambda: proc.stdout.read1(65536), b"")
    reader = threading.Thread(target=read_supervisor_stream, args=(chunks, cap, run), daemon=True)
    reader.start()
    reader.join(timeout=limits.timeout_s)
    run.timed_out = reader.is_alive()
    run.timings["worker"] = time.perf_counter() - t0
    _kill_group(proc)  # also reaps anything the candidate left behind in its session
    run.exit_code = proc.wait()
    reader.join(timeout=5)
    if run.report is not None:
        run.report["oom_kills"] = 0  # the host's cgroup counters say nothing about this process
    return run
