"""Render a report Document as one self-contained HTML page (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name

from autoprune.reports.document import Code, Document, Figure, Para, Table
from autoprune.safe_text import terminal_safe

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; } td, th { border: 1px solid #ccc; padding: .25rem .6rem; }
th { background: #f2f4f4; text-align: left; } figure { margin: 1rem 0; } img { max-width: 100%; }
figcaption { font-style: italic; color: #555; } code { background: #f4f4f4; padding: 0 .2rem; }
.highlight pre { padding: .8rem; overflow-x: auto; border: 1px solid #ddd; }
"""


def inline(text: str) -> str:
    """Escape text and turn `code spans` into <code> (the only inline markup reports use)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(terminal_safe(text)))


def embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_block(block, images: dict[str, Path]) -> str:
    if isinstance(block, Para):
        return f"<p>{inline(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{inline(h)}</th>" for h in block.headers)
        body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Code):
        return highlight(terminal_safe(block.text), get_lexer_by_name(block.language), HtmlFormatter())
    if isinstance(block, Figure):
        return (f'<figure><img alt="{html.escape(block.caption)}" src="{embed_png(images[block.name])}">'
                f"<figcaption>{inline(block.caption)}</figcaption></figure>")
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(doc: Document, images: dict[str, Path]) -> str:
    """`images` maps figure names to PNG files, read and embedded so the page stands alone."""
    body = [f"<h1>{inline(doc.title)}</h1>"]
    for section in doc.sections:
        body.append(f"<h2>{inline(section.title)}</h2>")
        body += [render_block(b, images) for b in section.blocks]
    css = STYLE + HtmlFormatter().get_style_defs(".highlight")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(doc.title)}</title>"
            f"<style>{css}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
