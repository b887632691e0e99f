"""The Docker backend: one locked-down container per candidate, through the Docker SDK.

No network, read-only root filesystem, non-root numeric user, no capabilities,
no-new-privileges, an init process, pids / memory (= memory+swap) / CPU limits,
size-capped tmpfs for /tmp and /out, capped logs, inputs mounted read-only, an
explicit environment (nothing from the host), never a pull. A wall-clock
timeout removes the container whatever it is doing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.types import LogConfig, Mount, Ulimit

from autoprune.errors import SandboxError
from autoprune.sandbox import protocol as P
from autoprune.sandbox.gpus import device_requests
from autoprune.sandbox.orphans import OWNER_LABEL, SANDBOX_LABEL, owner_label, reap_orphans
from autoprune.sandbox.transport import RawRun, read_supervisor_stream

if TYPE_CHECKING:
    from autoprune.sandbox.verdict import SandboxLimits

DEFAULT_IMAGE = "autoprune-sandbox:latest"
SANDBOX_USER = "65534:65534"   # nobody:nogroup, numeric so no passwd lookup is involved
BUILD_HINT = "run autoprune-agent sandbox build"


_reaped = False


def docker_client() -> docker.DockerClient:
    """A client for the local engine, or SandboxError with one actionable line. The first
    client of a process removes the containers that killed runs on this host left behind."""
    global _reaped
    try:
        client = docker.from_env(timeout=60)
        client.ping()
        if not _reaped:
            _reaped = True
            reap_orphans(client)
        return client
    except DockerException as exc:
        reason = str(exc).splitlines()[0][:160]
        raise SandboxError(f"Docker is not reachable ({reason}); start the Docker engine, "
                           "or use --sandbox process (weaker)") from None


def require_image(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.get(image)
    except ImageNotFound:
        raise SandboxError(f"sandbox image {image} is missing: {BUILD_HINT}") from None


def container_config(image: str, limits: SandboxLimits, cap: int, *, bundle: Path, inputs: Path,
                     code: Path, wait_input_s: float = 0.0) -> dict:
    """The full `containers.create` keyword set (tests assert on it). `wait_input_s` > 0 starts
    a warm container whose worker imports torch, then waits that long for its inputs."""
    args = ["--stdout-cap", str(limits.stdout_bytes), "--wait-input", str(wait_input_s)]
    args += ["--raw"] if limits.raw else []
    threads = str(max(1, limits.threads))
    ro = lambda src, dst: Mount(target=dst, source=str(src), type="bind", read_only=True)  # noqa: E731
    tmpfs_opts = "noexec,nosuid,nodev"
    return dict(
        image=image,
        command=P.bootstrap_argv("python3", P.CODE_DIR, "autoprune.sandbox.supervisor", args),
        user=SANDBOX_USER, working_dir="/tmp",
        environment={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HOME": "/tmp",
                     "PYTHONDONTWRITEBYTECODE": "1"},
        network_mode="none", read_only=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], init=True, ipc_mode="none",
        pids_limit=limits.pids, mem_limit=limits.memory_bytes, memswap_limit=limits.memory_bytes,
        nano_cpus=int(limits.cpus * 1e9),
        tmpfs={"/tmp": f"size={limits.tmp_bytes},mode=1777,{tmpfs_opts}",
               P.OUTPUT_DIR: f"size={cap},uid=65534,gid=65534,mode=0700,{tmpfs_opts}"},
        mounts=[ro(bundle, P.BUNDLE_DIR), ro(inputs, P.INPUT_DIR), ro(code, P.CODE_DIR)],
        log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        ulimits=[Ulimit(name="nofile", soft=256, hard=256), Ulimit(name="core", soft=0, hard=0)],
        device_requests=device_requests(limits.gpus),
        labels={SANDBOX_LABEL: "candidate", OWNER_LABEL: owner_label()},
        stdin_open=False, tty=False, detach=True,
    )


def remove_container(container) -> None:
    try:
        container.remove(force=True)
    except NotFound:
        pass


def _final_state(container, run: RawRun) -> None:
    try:
        container.reload()
        state = container.attrs.get("State", {})
        run.killed_oom = bool(state.get("OOMKilled"))
        if not state.get("Running"):
            run.exit_code = state.get("ExitCode")
    except NotFound:
        pass


@dataclass
class StartedContainer:
    """A running candidate container whose report is being read in the background."""

    container: object
    reader: threading.Thread
    run: RawRun
    started_at: float


def start_container(client: docker.DockerClient, config: dict, cap: int) -> StartedContainer:
    """Create, attach (before start: nothing is missed), start, and read in the background."""
    run = RawRun()
    t0 = time.perf_counter()
    try:
        container = client.containers.create(**config)
    except ImageNotFound:
        raise SandboxError(f"sandbox image {config['image']} is missing: {BUILD_HINT}") from None
    try:
        stream = container.attach(stdout=True, stderr=False, stream=True, logs=False)
        reader = threading.Thread(target=read_supervisor_stream, args=(stream, cap, run),
                                  daemon=True)
        container.start()
        reader.start()
    except BaseException:
        remove_container(container)
        raise
    started_at = time.perf_counter()
    run.timings["container_start"] = started_at - t0
    return StartedContainer(container, reader, run, started_at)


def finish_container(started: StartedContainer, limits: SandboxLimits) -> RawRun:
    """Wait for the report up to the wall-clock limit; always remove the container."""
    run = started.run
    t0 = time.perf_counter()
    try:
        started.reader.join(timeout=limits.timeout_s)
        run.timed_out = started.reader.is_alive()
        run.timings["worker"] = time.perf_counter() - t0
        if run.report is None or run.output_overflow:
            _final_state(started.container, run)
    finally:
        t_rm = time.perf_counter()
        remove_container(started.container)
        run.timings["container_remove"] = time.perf_counter() - t_rm
    return run


def run_in_container(client: docker.DockerClient, config: dict, limits: SandboxLimits,
                     cap: int) -> RawRun:
    """One cold run: start, wait, remove."""
    return finish_container(start_container(client, config, cap), limits)
