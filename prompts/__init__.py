"""GCoT prompt templates (text files) and the prompt-set registry (entry points).

`get_prompt_set("gcot").render("write_code", code_style="expression", hypothesis=...)`
returns chat messages; see prompts/README.md for every context variable.
"""

from autoprune.prompts.registry import (
    NODES, PromptSet, available_prompt_sets, builtin_gcot, get_prompt_set, load_folder,
)

__all__ = ["NODES", "PromptSet", "available_prompt_sets", "builtin_gcot", "get_prompt_set", "load_folder"]
