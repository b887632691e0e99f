"""The trusted code the sandbox runs: a minimal copy of the few modules the worker needs.

The worker needs masks, stats, the contract, errors and the sandbox's own policy/worker
modules, nothing else (no docker, no transformers). They are staged once per
content hash into a cache folder with stub package `__init__`s, mounted
read-only into every container (so an image never runs stale worker code) and
baked into the image by the builder.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import autoprune

_PACKAGE_ROOT = Path(autoprune.__file__).resolve().parent
_SANDBOX_ROOT = Path(__file__).resolve().parent

TRUSTED_FILES = {
    "autoprune/errors.py": _PACKAGE_ROOT / "errors.py",
    "autoprune/pruning/contract.py": _PACKAGE_ROOT / "pruning" / "contract.py",
    "autoprune/pruning/stats.py": _PACKAGE_ROOT / "pruning" / "stats.py",
    "autoprune/pruning/masks.py": _PACKAGE_ROOT / "pruning" / "masks.py",
    "autoprune/pruning/pattern.py": _PACKAGE_ROOT / "pruning" / "pattern.py",
    "autoprune/pruning/profile.py": _PACKAGE_ROOT / "pruning" / "profile.py",
    **{f"autoprune/sandbox/{name}": _SANDBOX_ROOT / name
       for name in ("protocol.py", "policy.py", "parser_lock.py", "worker.py", "supervisor.py",
                    "score_profile.py")},
}
STUB_PACKAGES = ("autoprune", "autoprune/pruning", "autoprune/sandbox")
_STUB = '"""Sandbox copy: only the modules the worker needs (see autoprune.sandbox.codedir)."""\n'


@functools.lru_cache(maxsize=1)
def trusted_sources() -> tuple[tuple[str, bytes], ...]:
    """The trusted modules' bytes, read once per process: the worker then runs the code this
    process verifies masks with, even if the source tree is edited while a run is going on."""
    return tuple((rel, src.read_bytes()) for rel, src in sorted(TRUSTED_FILES.items()))


def code_hash() -> str:
    digest = hashlib.sha256()
    for rel, data in trusted_sources():
        digest.update(rel.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def write_trusted_code(target: Path) -> Path:
    """Copy the trusted modules into `target` (world-readable: the container user is not root)."""
    for package in STUB_PACKAGES:
        (target / package).mkdir(parents=True, exist_ok=True)
        (target / package / "__init__.py").write_text(_STUB)
    for rel, data in trusted_sources():
        (target / rel).write_bytes(data)
    for root, dirs, files in os.walk(target):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return target


def staged_code_dir(cache_root: Path | None = None) -> Path:
    """The staged copy for the current sources (created once per content hash)."""
    cache_root = cache_root or Path(os.environ.get("AUTOPRUNE_CACHE",
                                                   Path.home() / ".cache" / "autoprune"))
    target = cache_root / "sandbox-code" / code_hash()
    if not (target / "autoprune" / "sandbox" / "worker.py").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # one fresh folder per caller: processes and threads staging at once never share one
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.tmp"))
        write_trusted_code(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process staged it first
            shutil.rmtree(tmp, ignore_errors=True)
    os.chmod(target, 0o755)
    return target
