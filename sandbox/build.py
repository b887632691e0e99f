"""Building the sandbox image offline: debootstrap base + local wheels, cached and idempotent.

    1. base image (skipped if present): `debootstrap --variant=minbase --include=python3
       bookworm` from apt's configured Debian mirror, trimmed, then `docker import`;
    2. runtime packages: the host's pip installs torch (this environment's exact
       version, from its configured wheel folder), numpy, safetensors and
       RestrictedPython into a cached folder (`pip install --target`);
    3. `docker build` FROM the base with those packages and the trusted worker code.

Step 3 is skipped when the image exists, unless `force=True`.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from docker.errors import APIError, BuildError, ImageNotFound

from autoprune.errors import SandboxError
from autoprune.sandbox.codedir import write_trusted_code
from autoprune.sandbox.docker_backend import DEFAULT_IMAGE, docker_client

BASE_IMAGE = "autoprune-sandbox-base:bookworm"
IMAGE_DIR = Path(__file__).resolve().parent / "image"
RUNTIME_PACKAGES = ("torch", "numpy", "safetensors", "RestrictedPython")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Trimmed from the runtime: C++ headers, CMake files, static libraries, caches.
_TRIM = ("torch/include", "torch/share", "torch/lib/*.a", "**/__pycache__", "**/tests")

Step = Callable[[str], None]


def _cache_root() -> Path:
    return Path(os.environ.get("AUTOPRUNE_CACHE", Path.home() / ".cache" / "autoprune"))


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources), else the default."""
    for path in sorted(Path("/etc/apt").glob("sources.list*")) + \
            sorted(Path("/etc/apt/sources.list.d").glob("*")):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b", text, re.M)
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        raise SandboxError(f"{what} failed (exit {proc.returncode}): {tail}")


def _image_exists(client, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except ImageNotFound:
        return False


def build_base(client, step: Step) -> None:
    if _image_exists(client, BASE_IMAGE):
        step(f"base image {BASE_IMAGE} present (cached)")
        return
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed (apt-get install debootstrap), "
                           "or build sandbox/image/Dockerfile with a registry")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="autoprune-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        step(f"debootstrap bookworm (minbase + python3) from {mirror}")
        _run(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(rootfs),
              mirror], "debootstrap")
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/locale", "usr/share/info"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        step(f"docker import -> {BASE_IMAGE}")
        tarball = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], "tar")
        repo, tag = BASE_IMAGE.split(":")
        client.api.import_image_from_file(str(tarball), repository=repo, tag=tag)


def runtime_requirements() -> list[str]:
    """This environment's exact versions, so the sandbox scores like the host."""
    return [f"{name}=={md.version(name).split('+')[0]}" for name in RUNTIME_PACKAGES]


def install_runtime(step: Step) -> Path:
    """pip install --target into a folder cached per requirement set."""
    reqs = runtime_requirements()
    target = _cache_root() / "sandbox-build" / ("site-packages-" + "-".join(
        r.replace("==", "") for r in reqs).lower())
    if (target / ".complete").exists():
        step(f"runtime packages cached ({', '.join(reqs)})")
        return target
    step(f"pip install --target ({', '.join(reqs)}) from local wheels")
    shutil.rmtree(target, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(target),
          "--only-binary=:all:", *reqs], "pip install")
    for pattern in _TRIM:
        for path in target.glob(pattern):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    shutil.rmtree(target / "bin", ignore_errors=True)
    (target / ".complete").write_text(" ".join(reqs))
    return target


def _docker_build(client, context: Path, tag: str, step: Step) -> None:
    try:
        for item in client.api.build(path=str(context), tag=tag, rm=True, forcerm=True, pull=False,
                                     dockerfile="Dockerfile", network_mode="none", decode=True):
            if "error" in item:
                raise SandboxError(f"docker build failed: {item['error'].strip()}")
            line = str(item.get("stream", "")).strip()
            if line.startswith("Step ") or line.startswith("torch "):
                step(f"  {line}")
    except (APIError, BuildError) as exc:
        raise SandboxError(f"docker build failed: {exc}") from None


def build_image(tag: str = DEFAULT_IMAGE, *, force: bool = False, step: Step = print) -> dict:
    """Build (or reuse) the sandbox image; returns timings per stage in seconds."""
    client = docker_client()
    timings = {}
    if not force and _image_exists(client, tag):
        step(f"image {tag} present (cached); use --force to rebuild")
        return {"cached": 1.0}
    t0 = time.perf_counter()
    build_base(client, step)
    timings["base"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    site = install_runtime(step)
    timings["packages"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autoprune-image-", dir="/var/tmp") as tmp:
        context = Path(tmp)
        shutil.copyfile(IMAGE_DIR / "Dockerfile.offline", context / "Dockerfile")
        step("staging build context")
        shutil.copytree(site, context / "site-packages", ignore=shutil.ignore_patterns(".complete"))
        write_trusted_code(context / "code")
        step(f"docker build -> {tag}")
        _docker_build(client, context, tag, step)
    timings["build"] = time.perf_counter() - t2
    step(f"image {tag} ready ({sum(timings.values()):.0f} s)")
    return timings


def main() -> None:
    """`python -m autoprune.sandbox.build [--force]`: what CI runs before pytest."""
    try:
        build_image(force="--force" in sys.argv[1:], step=lambda message: print(message, flush=True))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
