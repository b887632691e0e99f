"""Prompt sets: named collections of GCoT templates, found through entry points.

A prompt set maps template names (file stems: "analyse", "write_code_program",
"contract", ...) to Jinja2 text. The built-in set "gcot" lives in
`templates/gcot/*.txt` and is registered in pyproject.toml under the entry-point
group `autoprune.prompts` like any plugin. A user package registers its own
set under the same group; a set with `base="gcot"` only needs the templates it
changes (the rest, and the `{% include %}` targets, come from the base).

Template format: lines `@@ system`, `@@ user`, `@@ assistant` start chat
messages (few-shot turns are written as assistant messages). A template
without a `@@ system` first message gets the set's `system` template prepended.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Optional, Union

import jinja2

from autoprune.errors import BadInputError
from autoprune.plugins import loaded_plugins
from autoprune.pruning import contract

GROUP = "autoprune.prompts"
BUILTIN = "gcot"
ROLES = ("system", "user", "assistant")
NODES = ("analyse", "hypothesise", "write_code", "repair", "reflect")
CODE_STYLES = ("program", "expression")     # style variants: `<node>_<style>.txt`

# Defaults for every context variable a built-in template reads (see prompts/README.md).
DEFAULT_CONTEXT: dict[str, Any] = {
    "model_name": "the model", "sparsity": 0.5, "pattern": "unstructured", "model_profile": "(no profile)",
    "analysis": "(no analysis yet)", "archive": "The archive is empty.", "archive_brief": "",
    "insights": "No hypotheses tested yet.", "n_hypotheses": 1, "hypothesis": "", "has_gram": False,
    "has_hessian": False, "has_grad": False,
    "error": "", "source": "", "expression": "", "results": "(no results yet)",
    "example_offset": None, "n_examples": 3, "elite": [],
}


@dataclass
class PromptSet:
    name: str
    templates: dict[str, str]
    base: Optional[str] = None          # resolve missing templates from this set
    description: str = ""
    _env: Optional[jinja2.Environment] = field(default=None, repr=False, compare=False)

    def merged_over(self, base: "PromptSet") -> "PromptSet":
        """This set's templates on top of `base`'s (single-template overrides). Overriding a node's
        template also replaces base's code-style variants of it (`reflect` hides `reflect_expression`),
        so the override is what every run renders unless the set gives its own variants."""
        hidden = {f"{name}_{style}" for name in self.templates for style in CODE_STYLES}
        inherited = {k: v for k, v in base.templates.items() if k not in hidden}
        return PromptSet(self.name, {**inherited, **self.templates}, None, self.description or base.description)

    def template_name(self, node: str, code_style: Optional[str] = None) -> str:
        """`write_code` + style "expression" -> "write_code_expression" when that template exists."""
        if code_style and f"{node}_{code_style}" in self.templates:
            return f"{node}_{code_style}"
        if node in self.templates:
            return node
        raise BadInputError(f"prompt set '{self.name}' has no template for node '{node}'"
                            + (f" (style {code_style})" if code_style else ""))

    def render_text(self, template: str, **context: Any) -> str:
        return self._environment().get_template(f"{template}.txt").render(**full_context(context))

    def render(self, node: str, **context: Any) -> list[dict[str, str]]:
        """Chat messages for one graph node; `code_style` picks the write_code / repair variant."""
        name = self.template_name(node, context.get("code_style"))
        messages = split_messages(self.render_text(name, **context))
        if not messages or messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.render_text("system", **context).strip()})
        return messages

    def _environment(self) -> jinja2.Environment:
        if self._env is None:
            loader = jinja2.DictLoader({f"{k}.txt": v for k, v in self.templates.items()})
            # StrictUndefined: a typo in a template variable fails loudly instead of rendering "".
            self._env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                                           keep_trailing_newline=False, autoescape=False)
        return self._env


def full_context(context: dict[str, Any]) -> dict[str, Any]:
    ctx = {**DEFAULT_CONTEXT, **{k: v for k, v in context.items() if v is not None}}
    ctx.setdefault("sparsity_pct", round(float(ctx["sparsity"]) * 100))
    offered = {k: bool(ctx[k]) for k in ("has_hessian", "has_gram", "has_grad")}
    ctx.setdefault("contract", contract.bullet_lines(**offered))      # autoprune/pruning/contract.py
    ctx.setdefault("contract_line", contract.one_line(**offered))
    if ctx.get("example_offset") is None:
        # Which few-shot examples a small model sees (it tends to copy the last one): vary with the
        # hypothesis, deterministically, when the caller does not choose.
        ctx["example_offset"] = zlib.crc32(str(ctx["hypothesis"]).encode("utf-8"))
    for key in ("archive", "archive_brief"):
        if isinstance(ctx[key], (list, tuple)):
            ctx[key] = render_archive_entries(ctx[key], with_code=(key == "archive"))
    return ctx


def render_archive_entries(entries: list[dict], *, with_code: bool) -> str:
    """Archive entries given as dicts (code, hypothesis, fitness, reflection, expression) as text."""
    if not entries:
        return "The archive is empty."
    blocks = []
    for rank, e in enumerate(entries, 1):
        fitness = e.get("fitness")
        head = f"#{rank} perplexity {fitness:.2f}" if isinstance(fitness, (int, float)) else f"#{rank}"
        lines = [f"{head}: {e.get('expression') or e.get('hypothesis') or '-'}"]
        if e.get("reflection"):
            lines.append(f"lesson: {e['reflection']}")
        if with_code and e.get("code"):
            lines.append(f"```python\n{e['code'].strip()}\n```")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def split_messages(text: str) -> list[dict[str, str]]:
    """Split rendered text on `@@ role` lines; text before any marker is a user message."""
    messages: list[dict[str, str]] = []
    role, lines = "user", []
    for line in text.splitlines():
        marker = line.strip()
        if marker.startswith("@@ ") and marker[3:] in ROLES:
            _flush(messages, role, lines)
            role, lines = marker[3:], []
        else:
            lines.append(line)
    _flush(messages, role, lines)
    return messages


def _flush(messages: list, role: str, lines: list[str]) -> None:
    content = "\n".join(lines).strip()
    if content:
        messages.append({"role": role, "content": content})


def load_folder(folder: Union[str, Path], name: str, *, base: Optional[str] = None) -> PromptSet:
    """Every `*.txt` of a folder as a prompt set (the way plugins usually ship templates)."""
    root = Path(folder)
    templates = {p.stem: p.read_text(encoding="utf-8") for p in sorted(root.glob("*.txt"))}
    if not templates:
        raise BadInputError(f"prompt folder {root} has no *.txt templates")
    return PromptSet(name, templates, base)


def builtin_gcot() -> PromptSet:
    """The built-in graph-of-thought set (entry point `gcot`)."""
    folder = files("autoprune.prompts") / "templates" / BUILTIN
    templates = {Path(p.name).stem: p.read_text(encoding="utf-8")
                 for p in folder.iterdir() if p.name.endswith(".txt")}
    return PromptSet(BUILTIN, templates, description="GCoT: analyse, hypothesise, write_code, repair, reflect")


def _as_prompt_set(name: str, obj: Union[PromptSet, Callable[[], PromptSet], dict]) -> PromptSet:
    """Entry points may name a PromptSet, a factory returning one, or a dict of templates."""
    value = obj() if callable(obj) and not isinstance(obj, PromptSet) else obj
    if isinstance(value, dict):
        value = PromptSet(name, dict(value), base=BUILTIN)
    if not isinstance(value, PromptSet):
        raise BadInputError(f"prompt plugin '{name}' gave {type(value).__name__}, not a PromptSet")
    return value


def available_prompt_sets() -> list[str]:
    return sorted(loaded_plugins(GROUP))


def get_prompt_set(name: str = BUILTIN, *, _seen: tuple = ()) -> PromptSet:
    """The named set from the entry points, merged over its base set when it has one."""
    plugins = loaded_plugins(GROUP)
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none"
        raise BadInputError(f"unknown prompt set '{name}'; installed: {known}")
    prompt_set = _as_prompt_set(name, plugins[name])
    if prompt_set.base and prompt_set.base != name and prompt_set.base not in _seen:
        prompt_set = prompt_set.merged_over(get_prompt_set(prompt_set.base, _seen=_seen + (name,)))
    return prompt_set
