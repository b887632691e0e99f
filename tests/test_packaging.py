"""The wheel installs under the one `autoprune` namespace and its console script runs."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = ("autoprune", "autoprune.agent", "autoprune.sandbox", "autoprune.evaluators",
              "autoprune.prompts", "autoprune.pruning", "autoprune.cli")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True)
    return next(out.glob("autoprune_agent-*.whl"))


def test_wheel_has_only_the_autoprune_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("autoprune_agent-")}
    assert top == {"autoprune"}
    for folder in ("agent", "sandbox", "evaluators", "prompts"):
        assert any(n.startswith(f"autoprune/{folder}/") for n in names), folder
    assert any(n.startswith("autoprune/prompts/templates/") for n in names)


def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # Dependencies come from this environment's site-packages (a plain path entry: the
    # editable install's .pth hooks there are not processed), the project only from the wheel.
    fresh_site = next((venv / "lib").glob("python*/site-packages"))
    (fresh_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    code = ("import importlib, autoprune; "
            f"[importlib.import_module(m) for m in {NAMESPACES!r}]; print(autoprune.__file__)")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where, where
    help_text = subprocess.run([str(venv / "bin" / "autoprune-agent"), "--help"], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout
    for command in ("run", "prune", "eval", "replay", "report", "sandbox", "plugins"):
        assert command in help_text, command


def test_editable_install_imports_every_namespace():
    code = f"import importlib; [importlib.import_module(m) for m in {NAMESPACES!r}]"
    subprocess.run([sys.executable, "-c", code], cwd="/", check=True)
