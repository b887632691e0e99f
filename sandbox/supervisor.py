"""The container's main process: runs the worker as a child and reports how it ended.

Standard library only, so it starts in milliseconds. It caps the worker's
stdout+stderr (keeping only the tail for crash messages), reads the cgroup's
OOM-kill counter, prints one report line (protocol.SENTINEL + JSON) listing the
files of the size-capped /out tmpfs, then streams those files' bytes in that
order and exits. (A tmpfs disappears with its container and `docker cp` cannot
read one, so stdout is the transport; the host caps what it reads.)

The report is information, not authority: a hostile worker shares this uid and
could forge it, which can only make its own verdict worse, since the host
verifies every mask itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from autoprune.sandbox import protocol as P

_OOM_COUNTERS = ("/sys/fs/cgroup/memory.events",                    # cgroup v2
                 "/sys/fs/cgroup/memory/memory.oom_control")         # cgroup v1


def oom_kills() -> int:
    for path in _OOM_COUNTERS:
        try:
            with open(path) as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def drain(child: subprocess.Popen, cap: int) -> tuple[bytes, int, bool]:
    """Read the child's output to the end, keep the last 8 KiB; kill it past `cap` bytes."""
    tail, total, overflow = b"", 0, False
    while True:
        chunk = child.stdout.read1(65536)
        if not chunk:
            break
        total += len(chunk)
        tail = (tail + chunk)[-8192:]
        if total > cap and not overflow:
            overflow = True
            child.kill()
    return tail, total, overflow


def run_worker(args) -> dict:
    worker_args = ["--bundle", args.bundle, "--input", args.input, "--out", args.out,
                   "--spawned-at", repr(time.time()), "--wait-input", str(args.wait_input)]
    if args.raw:
        worker_args.append("--raw")
    argv = P.bootstrap_argv(sys.executable, args.code, "autoprune.sandbox.worker", worker_args)
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, cwd=args.out)
    tail, total, overflow = drain(child, args.stdout_cap)
    code = child.wait()
    return {"returncode": code, "stdout_bytes": total, "stdout_overflow": overflow,
            "tail": P.tail_text(tail), "oom_kills": oom_kills(),
            "worker_seconds": time.perf_counter() - started}


def list_outputs(out: str) -> list[tuple[str, int]]:
    """Regular files directly in `out` (no links, no folders), with their sizes."""
    files = []
    for entry in sorted(os.scandir(out), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False):
            files.append((entry.name, entry.stat(follow_symlinks=False).st_size))
    return files


def stream_files(out: str, files: list[tuple[str, int]]) -> None:
    """Write exactly `size` bytes per listed file (truncated or zero-padded if it changed)."""
    sink = sys.stdout.buffer
    for name, size in files:
        with open(os.path.join(out, name), "rb") as handle:
            data = handle.read(size)
        sink.write(data + b"\0" * (size - len(data)))
    sink.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoprune.sandbox.supervisor")
    parser.add_argument("--bundle", default=P.BUNDLE_DIR)
    parser.add_argument("--input", default=P.INPUT_DIR)
    parser.add_argument("--out", default=P.OUTPUT_DIR)
    parser.add_argument("--code", default=P.CODE_DIR)
    parser.add_argument("--stdout-cap", type=int, default=1 << 20)
    parser.add_argument("--wait-input", type=float, default=0.0)
    parser.add_argument("--raw", action="store_true")
    args = parser.parse_args(argv)
    report = run_worker(args)
    report["files"] = list_outputs(args.out)
    sys.stdout.write(P.SENTINEL + json.dumps(report) + "\n")
    sys.stdout.flush()
    stream_files(args.out, report["files"])
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
