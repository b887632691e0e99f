"""Render a report Document as Markdown; figures are linked as PNG files beside it.

Text in a report comes from the trace (LLM words, candidate errors, file names): it is
escaped so that it stays text. No raw HTML (`<`, `>`), no links or images (`[`, `]`), no
emphasis, no stray code spans, no block syntax at the start of a paragraph, no pipes or
newlines inside table cells, and code fences longer than any backtick run inside them.
Only the `code spans` a paragraph spells out are kept (their content cannot hold a backtick).
"""

from __future__ import annotations

import re

from autoprune.reports.document import Code, Document, Figure, Para, Table
from autoprune.safe_text import terminal_safe

CODE_SPAN = re.compile(r"`([^`]+)`")
# Backslash first (so an escaped character cannot be un-escaped), then what Markdown acts on
# anywhere in a line: links/images, emphasis, code spans, raw HTML. `_` only at a word edge
# (intraword underscores are plain text in CommonMark and appear in names like wanda_uniform).
INLINE_SPECIAL = re.compile(r"([\\\[\]*`~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
BLOCK_START = re.compile(r"^(\s*)([#>+\-=|]|\d+[.)])")
HTML_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def one_line(text: object) -> str:
    return " ".join(terminal_safe(text, keep_newlines=False).split())


def escape_inline(line: str) -> str:
    line = re.sub(r"[<>&]", lambda m: HTML_ENTITIES[m.group(0)], line)
    return INLINE_SPECIAL.sub(r"\\\1", line)


def escape_text(text: object) -> str:
    """Untrusted text as one line of literal Markdown."""
    return escape_inline(one_line(text))


def escape_paragraph(text: str) -> str:
    """A paragraph: literal text, except the `code spans` it spells out; never a heading, list or quote."""
    text = one_line(text)
    parts, last = [], 0
    for match in CODE_SPAN.finditer(text):
        parts += [escape_inline(text[last:match.start()]), f"`{match.group(1)}`"]
        last = match.end()
    joined = "".join(parts + [escape_inline(text[last:])])
    return BLOCK_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], joined, count=1)


def escape_cell(text: object) -> str:
    return escape_text(text).replace("|", "\\|")


def code_fence(text: str) -> str:
    """Three backticks, or one more than the longest backtick run in the code."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_table(table: Table) -> str:
    lines = ["| " + " | ".join(escape_cell(h) for h in table.headers) + " |",
             "|" + "|".join(" --- " for _ in table.headers) + "|"]
    lines += ["| " + " | ".join(escape_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_block(block, images: dict[str, str]) -> str:
    if isinstance(block, Para):
        return escape_paragraph(block.text)
    if isinstance(block, Table):
        return render_table(block)
    if isinstance(block, Code):
        text = terminal_safe(block.text).rstrip()
        fence = code_fence(text)
        return f"{fence}{escape_text(block.language)}\n{text}\n{fence}"
    if isinstance(block, Figure):
        caption = escape_text(block.caption)
        return f"![{caption}]({images[block.name]})\n\n*{caption}*"
    raise TypeError(f"unknown block {type(block).__name__}")


def render_markdown(doc: Document, images: dict[str, str]) -> str:
    """`images` maps figure names to paths relative to the Markdown file."""
    parts = [f"# {escape_text(doc.title)}"]
    for section in doc.sections:
        parts.append(f"## {escape_text(section.title)}")
        parts += [render_block(b, images) for b in section.blocks]
    return "\n\n".join(parts) + "\n"
