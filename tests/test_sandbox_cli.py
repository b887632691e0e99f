"""`autoprune-agent sandbox build|check`: one-line errors, and the self-check table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autoprune.errors import SandboxError
from autoprune.sandbox import SandboxLimits, ScoringRequest, run_candidate
from autoprune.sandbox.tiny import tiny_bundle
from sandbox_support import WANDA, require_docker_image


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from autoprune.cli import main; main()", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)


@pytest.mark.parametrize("command", ["check", "build"])
def test_no_docker_engine_is_one_line_and_exit_2(command):
    result = cli("sandbox", command, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Docker is not reachable" in lines[0]


@pytest.mark.docker
def test_missing_image_says_how_to_build_it(tmp_path):
    require_docker_image()
    bundle = tiny_bundle(tmp_path)
    limits = SandboxLimits(image="autoprune-sandbox:no-such-tag")
    with pytest.raises(SandboxError, match="run autoprune-agent sandbox build"):
        run_candidate(WANDA, bundle, ScoringRequest(sparsity={bundle.names[0]: 0.5}), limits=limits)


@pytest.mark.docker
@pytest.mark.slow
def test_sandbox_check_reports_every_probe_holding():
    require_docker_image()
    result = cli("sandbox", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    for probe in ("network", "read-only", "secrets", "docker-socket", "privileges", "fork-bomb",
                  "memory-bomb", "sleep", "stdout-flood", "gate"):
        assert probe in result.stdout
    assert "NO" not in result.stdout
