"""Layers import only downward: import-linter checks pyproject's layers contract on the installed layout.

The root folders agent/, sandbox/, evaluators/, prompts/ install as `autoprune.agent`, ...
(setuptools `package-dir`), which import-linter cannot see from the source tree: the test
lays the package out as installed (symbolic links, from pyproject's mapping) and lints that.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def installed_layout(into: Path) -> Path:
    """`into/autoprune` as a wheel would install it, every entry a link to the source tree."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    package = into / "autoprune"
    package.mkdir()
    for entry in (ROOT / mapping["autoprune"]).iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        if name != "autoprune":
            (package / name.removeprefix("autoprune.")).symlink_to(ROOT / folder)
    return into


def layer_names() -> set[str]:
    (contract,) = PYPROJECT["tool"]["importlinter"]["contracts"]
    return {name.strip() for layer in contract["layers"] for name in re.split(r"[|:]", layer)}


def top_level_modules(package: Path) -> set[str]:
    """`autoprune.X` for every module and subpackage directly under the installed `autoprune`."""
    names = {p.stem for p in package.iterdir() if p.suffix == ".py" and p.stem != "__init__"}
    names |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    return {f"autoprune.{name}" for name in names}


def test_every_top_level_module_is_in_a_layer(tmp_path):
    """A module no layer names would escape the contract: each one must be placed."""
    package = installed_layout(tmp_path) / "autoprune"
    assert top_level_modules(package) == layer_names()


def test_layers_import_only_downward(tmp_path):
    """A layer that does not exist is an error, so the linter cannot pass by not seeing agent/ etc."""
    layout = installed_layout(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(layout)}
    done = subprocess.run([str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout
