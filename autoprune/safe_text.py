"""`terminal_safe`: untrusted text (LLM replies, candidate errors, run-folder strings) made safe to show.

Text from an LLM, a candidate's exception or a run folder may carry terminal escape
sequences: screen clears, cursor moves that forge output, OSC 52 clipboard writes,
hyperlinks, or bidi overrides that reorder what a reader sees. Every face (CLI, TUI,
reports) passes such text through this one function before showing it.

Allow-list: printable characters (`str.isprintable`) plus newline and tab stay; whole
escape sequences (CSI, OSC, DCS/SOS/PM/APC strings, two-byte ESC sequences, and their
8-bit C1 forms) are removed; every other character (C0/C1 controls, DEL, bidi and other
format characters, line separators) becomes a visible `\\xNN` / `\\uNNNN` escape.
"""

from __future__ import annotations

import re

# ESC [ ... final | CSI(0x9b) ... final; ESC ] / P / X / ^ / _ ... (BEL | ST) and their C1 forms;
# any other ESC + one character. An unterminated string sequence runs to the end of the text.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])(?:[^\x07\x1b\x9c]*)(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x7e]?",
)


def visible_escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: object, *, keep_newlines: bool = True) -> str:
    """`text` (any object, via str) with nothing a terminal or renderer would act on.

    keep_newlines=False also turns newlines and tabs into spaces (one-line fields: table
    cells, status lines)."""
    text = text if isinstance(text, str) else str(text)
    if text.isprintable():
        return text
    text = _ESCAPE_SEQUENCE.sub("", text)
    kept = "\n\t" if keep_newlines else ""
    out = []
    for char in text:
        if char.isprintable() or char in kept:
            out.append(char)
        elif not keep_newlines and char in "\n\t\r":
            out.append(" ")
        else:
            out.append(visible_escape(char))
    return "".join(out)
