"""Render a report Document as Markdown; figures are linked as PNG files beside it."""

from __future__ import annotations

from autoprune.reports.document import Code, Document, Figure, Para, Table


def escape_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(table: Table) -> str:
    lines = ["| " + " | ".join(escape_cell(h) for h in table.headers) + " |",
             "|" + "|".join(" --- " for _ in table.headers) + "|"]
    lines += ["| " + " | ".join(escape_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_block(block, images: dict[str, str]) -> str:
    if isinstance(block, Para):
        return block.text
    if isinstance(block, Table):
        return render_table(block)
    if isinstance(block, Code):
        fence = "````" if "```" in block.text else "```"
        return f"{fence}{block.language}\n{block.text.rstrip()}\n{fence}"
    if isinstance(block, Figure):
        return f"![{block.caption}]({images[block.name]})\n\n*{block.caption}*"
    raise TypeError(f"unknown block {type(block).__name__}")


def render_markdown(doc: Document, images: dict[str, str]) -> str:
    """`images` maps figure names to paths relative to the Markdown file."""
    parts = [f"# {doc.title}"]
    for section in doc.sections:
        parts.append(f"## {section.title}")
        parts += [render_block(b, images) for b in section.blocks]
    return "\n\n".join(parts) + "\n"
