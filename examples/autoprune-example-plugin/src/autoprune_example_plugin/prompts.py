"""A prompt set that changes one template of the built-in "gcot" set.

With `base="gcot"`, the registry takes every template this set does not ship
(analyse, hypothesise, write_code_*, ...) from the built-in set, so a plugin
only carries the text it changes: here a terser `reflect`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from autoprune.prompts import PromptSet, load_folder


def terse_gcot() -> PromptSet:
    folder = Path(str(files("autoprune_example_plugin") / "templates"))
    prompt_set = load_folder(folder, "gcot-terse", base="gcot")
    prompt_set.description = "gcot with a one-lesson reflect step"
    return prompt_set
