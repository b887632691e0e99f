"""Names and small helpers shared by the host and the in-container worker.

Standard library only: the supervisor imports it before torch is loaded.

Inputs (read-only):  /bundle (ScoringBundle), /input/candidate.py, /input/request.json
Outputs (size-capped tmpfs /out): masks.bin (bit-packed masks, concatenated in
`result.json`'s layer order), profile.json (mode "profile"), result.json (last).
The supervisor prints one line `SENTINEL + json` on the container's stdout when
the worker has ended; the host then copies /out and removes the container.
"""

from __future__ import annotations

import sys

SENTINEL = "@@autoprune-sandbox-report@@ "
CANDIDATE_FILE = "candidate.py"
REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
MASKS_FILE = "masks.bin"
PROFILE_FILE = "profile.json"

# Paths inside the container.
BUNDLE_DIR = "/bundle"
INPUT_DIR = "/input"
OUTPUT_DIR = "/out"
CODE_DIR = "/opt/autoprune/code"

# Worker result kinds (result.json "kind") besides "ok".
KIND_REJECTED = "rejected-static"
KIND_CRASHED = "crashed"
KIND_INVALID = "invalid-output"
KIND_TOO_MUCH = "too-much-output"


def bootstrap_argv(python: str, code_root: str, module: str, args: list[str]) -> list[str]:
    """argv that runs `module` as __main__ in isolated mode (-I: no env, no cwd on sys.path),
    importing the trusted code from `code_root` only."""
    boot = (f"import sys, runpy; sys.path.insert(0, {code_root!r}); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [python, "-I", "-c", boot, *args]


def tail_text(data: bytes, limit: int = 2000) -> str:
    """The last `limit` characters of a byte stream, as text (for crash messages)."""
    return data[-limit:].decode("utf-8", "replace")


def eprint(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)
