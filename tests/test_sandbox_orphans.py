"""Containers a killed run leaves behind are removed by the next sandbox user on the host,
through the real Docker engine; containers of a live owner are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import docker
import pytest

from autoprune.sandbox.orphans import OWNER_LABEL, SANDBOX_LABEL, _owner_alive, owner_label, reap_orphans
from autoprune.sandbox.session import SandboxSession
from autoprune.sandbox.tiny import tiny_bundle
from sandbox_support import require_docker_image

pytestmark = pytest.mark.docker

HOLD_A_WARM_CONTAINER = textwrap.dedent("""
    import sys, time
    from autoprune.sandbox.session import SandboxSession
    from autoprune.sandbox.tiny import tiny_bundle
    session = SandboxSession(tiny_bundle(sys.argv[1]))
    session._preparing.join()
    print(session._next[0].container.id, flush=True)
    time.sleep(600)
""")


def sandbox_containers(client) -> list:
    return client.containers.list(all=True, filters={"label": SANDBOX_LABEL})


def test_the_warm_container_of_a_killed_process_is_reaped_and_a_live_ones_is_kept(tmp_path):
    require_docker_image()
    client = docker.from_env()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_WARM_CONTAINER, str(tmp_path / "killed")],
                              stdout=subprocess.PIPE, text=True)
    try:
        orphan_id = holder.stdout.readline().strip()
        assert orphan_id, "the holder never started its warm container"
        orphan = client.containers.get(orphan_id)
        assert orphan.labels[OWNER_LABEL].split("/")[1] == str(holder.pid)
        with SandboxSession(tiny_bundle(tmp_path / "live")) as live:     # a live owner: this process
            live._preparing.join()
            live_id = live._next[0].container.id
            assert reap_orphans(client) == 0                          # the holder is still alive
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
            assert reap_orphans(client) == 1
            left = {c.id for c in sandbox_containers(client)}
            assert orphan_id not in left and live_id in left
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    left = {c.id for c in sandbox_containers(client)}       # other processes' containers may exist
    assert orphan_id not in left and live_id not in left    # the live session removed its own on close


def test_owner_labels_judge_pid_reuse_and_other_hosts():
    me = owner_label()
    host, pid, started = me.split("/")
    assert pid == str(os.getpid()) and _owner_alive(me)
    assert not _owner_alive(f"{host}/{pid}/{int(started) + 1 if started.isdigit() else 0}")   # a recycled pid
    assert _owner_alive(f"another-host/{pid}/0")                    # never judged from here
    assert _owner_alive("garbage")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    time.sleep(0.1)
    assert not _owner_alive(f"{host}/{dead.pid}/?")
