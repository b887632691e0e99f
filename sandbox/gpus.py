"""GPU access for sandbox containers through the Docker SDK's DeviceRequest."""

from __future__ import annotations

from typing import Optional

from docker.types import DeviceRequest

from autoprune.errors import BadInputError


def parse_gpus(gpus: Optional[str]) -> Optional[list[str]]:
    """"all" -> ["all"], "0,1" -> ["0", "1"], None/"" /"none" -> None (CPU only)."""
    if gpus is None or str(gpus).strip().lower() in ("", "none", "cpu"):
        return None
    text = str(gpus).strip().lower()
    if text == "all":
        return ["all"]
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids or not all(part.isdigit() for part in ids):
        raise BadInputError(f"--gpus {gpus!r}: expected 'all' or a comma list of GPU ids like '0,1'")
    return ids


def device_requests(gpus: Optional[str]) -> list[DeviceRequest]:
    """The `device_requests` for containers.create: [] when the run has no GPUs."""
    ids = parse_gpus(gpus)
    if ids is None:
        return []
    if ids == ["all"]:
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def assign_gpus(gpus: Optional[str], workers: int) -> list[Optional[str]]:
    """One GPU per parallel worker slot: slot i gets GPU id list[i % len] as its `gpus` string.

    With "all" the caller must name the ids (we cannot count GPUs without a driver on
    the host), so "all" gives every slot "all" only when there is a single slot.
    """
    if workers < 1:
        raise BadInputError("need at least one worker slot")
    ids = parse_gpus(gpus)
    if ids is None:
        return [None] * workers
    if ids == ["all"]:
        if workers == 1:
            return ["all"]
        raise BadInputError("with several parallel workers, name the GPUs (--gpus 0,1,...) so "
                            "each container gets its own")
    return [ids[slot % len(ids)] for slot in range(workers)]
