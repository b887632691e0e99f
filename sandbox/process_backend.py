"""The process backend: for machines without Docker, only on explicit request. WEAKER.

The same supervisor and worker run as a subprocess with an empty environment
(only OMP_NUM_THREADS and HOME), resource limits (RLIMIT_AS, CPU, NPROC, FSIZE,
NOFILE, CORE) and a wall-clock timeout. Where util-linux `unshare` works (root,
or unprivileged user namespaces), the supervisor also runs in

* a new NETWORK namespace: no interface but a downed loopback, so no TCP/UDP to
  the host, the LAN or the internet (not even to services on 127.0.0.1);
* a new PID namespace, with --kill-child: the supervisor is its PID 1, so every
  descendant, including ones that called setsid() or double-forked, dies when
  the run ends (the kernel kills a PID namespace with its init);
* a new MOUNT namespace with /proc remounted: other processes (and their
  /proc/<pid>/environ, cmdline, fds) are invisible.

What it can promise: no network, no surviving process, no view of other
processes, no host environment variables, bounded memory / CPU time / file size /
open files, a kill at the timeout; and the same static gate and restricted worker
as Docker (allow-listed names and attributes only), which is what actually keeps
a candidate from reaching files or syscalls.
What it cannot promise: filesystem isolation (the worker runs as the calling
user, root included, and could read or write whatever that user can if it ever
got past the restricted worker), GPU isolation, kernel-attack surface reduction
(no seccomp, capabilities are those of the user), memory accounting by cgroup
(RLIMIT_AS is address space, a coarse proxy). Without a working `unshare` it
cannot promise the first three either; it then says so in its warning.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
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

_ISOLATED = ("sandbox backend 'process' is WEAKER than Docker: no filesystem isolation (the "
             "worker runs as this user); network, PID and /proc are namespaced; the static gate, "
             "the restricted worker and rlimits protect this machine")
_NOT_ISOLATED = ("sandbox backend 'process' is WEAKER than Docker and NOT namespaced here "
                 "(`unshare` failed: {why}): the candidate's process has the network, sees other "
                 "processes and a setsid() child may outlive the run; only the static gate, the "
                 "restricted worker and rlimits protect this machine")
WARNING = _ISOLATED   # the base text (both variants start "sandbox backend 'process' is WEAKER")

_UNSHARE_FLAGS = ("--net", "--pid", "--fork", "--mount-proc", "--kill-child")


class WeakSandboxWarning(UserWarning):
    pass


@functools.lru_cache(maxsize=1)
def namespace_prefix() -> tuple[tuple[str, ...], str]:
    """(`unshare ...` argv prefix, "") when new net/pid/mount namespaces work here, else ((), why).

    Probed once per process by running `true` inside them."""
    unshare = shutil.which("unshare") or ("/usr/bin/unshare" if os.path.exists("/usr/bin/unshare")
                                          else None)
    if unshare is None:
        return (), "util-linux 'unshare' is not installed"
    prefix = (unshare, *_UNSHARE_FLAGS, *(() if os.geteuid() == 0 else ("--map-root-user",)), "--")
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True,
                               timeout=30, stdin=subprocess.DEVNULL, env={})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return (), f"{type(exc).__name__}: {exc}"
    if probe.returncode != 0:
        return (), probe.stderr.decode("utf-8", "replace").strip()[:200] or f"exit {probe.returncode}"
    return prefix, ""


def isolation_warning() -> str:
    prefix, why = namespace_prefix()
    return _ISOLATED if prefix else _NOT_ISOLATED.format(why=why)


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
    warnings.warn(isolation_warning(), WeakSandboxWarning, stacklevel=3)
    run = RawRun()
    args = ["--bundle", str(bundle), "--input", str(inputs), "--out", str(out), "--code", str(code),
            "--stdout-cap", str(limits.stdout_bytes)] + (["--raw"] if limits.raw else [])
    argv = [*namespace_prefix()[0],
            *P.bootstrap_argv(sys.executable, str(code), "autoprune.sandbox.supervisor", args)]
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
    # The group kill reaches `unshare` and its session; --kill-child then kills the namespace's
    # init, and with it every descendant, wherever it moved its session or group.
    _kill_group(proc)
    run.exit_code = proc.wait()
    reader.join(timeout=5)
    if run.report is not None:
        run.report.oom_kills = 0  # the host's cgroup counters say nothing about this process
    return run
