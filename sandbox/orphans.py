"""Who owns a sandbox container, and removing those whose owner is gone.

Every candidate container carries an owner label: this host, the pid of the process that
created it and that process's start time (so a recycled pid is not taken for the owner).
A run killed with `kill -9` cannot remove its own containers — a warm one waits up to
`WARM_IDLE_S` for a candidate — so the next sandbox user on this host removes the
containers whose owner process no longer exists. Containers of live processes, of other
hosts sharing the engine, or without an owner label are never touched.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Optional

from docker.errors import DockerException, NotFound

SANDBOX_LABEL = "autoprune.sandbox"
OWNER_LABEL = "autoprune.owner"


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()     # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


@lru_cache(maxsize=1)
def _host() -> str:
    return socket.gethostname()


def owner_label() -> str:
    """`host/pid/start-time` of this process (start time `?` where /proc is absent)."""
    pid = os.getpid()
    return f"{_host()}/{pid}/{_start_time(pid) or '?'}"


def _owner_alive(label: str) -> bool:
    host, _, rest = label.partition("/")
    pid_text, _, started = rest.partition("/")
    if host != _host() or not pid_text.isdigit():
        return True                         # not ours to judge
    pid = int(pid_text)
    if started != "?":
        return _start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphaned(client) -> list:
    """This host's sandbox containers whose owner process is gone."""
    try:
        containers = client.containers.list(all=True, filters={"label": [SANDBOX_LABEL, OWNER_LABEL]})
    except DockerException:
        return []
    owners = {c: (c.labels or {}).get(OWNER_LABEL, "") for c in containers}
    return [c for c, owner in owners.items() if owner and not _owner_alive(owner)]


def reap_orphans(client) -> int:
    """Remove this host's sandbox containers whose owner process is gone; returns how many."""
    removed = 0
    for container in orphaned(client):
        try:
            container.remove(force=True)
            removed += 1
        except (NotFound, DockerException):
            pass
    return removed
