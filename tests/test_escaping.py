"""Untrusted text (LLM replies, candidate errors and code, trace strings) at every face: terminal, TUI,
report.md and report.html. It must show as text: no escape sequence reaches a terminal, no Rich markup
is interpreted, no Markdown/HTML is injected, no code fence is broken out of."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys

from hypothesis import given, settings, strategies as st
from markdown_it import MarkdownIt
from rich.console import Console
from textual.widgets import DataTable, Static, Tree

from autoprune.agent.trace import TraceWriter
from autoprune.cli import TerminalSafeFormatter
from autoprune.reports.build import build_report
from autoprune.safe_text import terminal_safe
from autoprune.tui import ReplayApp

ESCAPES = ("\x1b]52;c;cHduZWQ=\x07"          # OSC 52: write the clipboard
           "\x1b[2J\x1b[H"                   # clear the screen, cursor home
           "\x1b[31mFAKE OK\x1b[0m"          # forged output
           "\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\"   # OSC 8 hyperlink
           "\x1bP1$qm\x1b\\"                 # DCS request
           "\x9b2J\x9d0;title\x9c"           # the same as 8-bit C1 controls
           "\r\x08\x7f\u202eevil\u2066")     # carriage return, backspace, DEL, bidi overrides
MARKUP = "W[/] [bold red]not bold[/] [link=http://evil.example]x[/link]"
MARKDOWN = "| pipe\n# heading <img src=x onerror=alert(1)> [click](javascript:alert(1)) ![t](http://track) *em*"
FENCE_BREAK = "def score(W, X):\n    s = '''\n````\n<script>alert(1)</script>\n````\n'''\n    return W.abs()\n"
UNSAFE = {chr(c) for c in range(0x20)} - {"\n", "\t"} | {chr(c) for c in range(0x7f, 0xa0)} \
    | set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u2028\u2029")


def test_terminal_safe_removes_sequences_and_shows_other_controls():
    shown = terminal_safe(ESCAPES + "\n\tkept")
    assert not UNSAFE & set(shown)
    assert "FAKE OK" in shown and "link" in shown and "\n\tkept" in shown
    assert "52;" not in shown and "evil.example" not in shown and "title" not in shown
    assert "\\x0d" in shown and "\\u202e" in shown                   # visible, not acted on
    assert terminal_safe("a\nb\tc", keep_newlines=False) == "a b c"
    assert terminal_safe("plain é 中文 🙂 [x]") == "plain é 中文 🙂 [x]"


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.lists(
    st.sampled_from(["\x1b", "[", "]", "\x07", "\\", "P", "52;", "\x9b", "\x9d", "\x9c", "m", "2J", "a", "\n",
                     "\r", "\u202e"])).map("".join))
def test_no_text_keeps_a_control_or_bidi_character(text):
    shown = terminal_safe(text)
    assert not UNSAFE & set(shown)
    assert terminal_safe(shown) == shown                               # idempotent: escaping twice changes nothing


def test_log_records_quoting_candidate_text_are_made_safe():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "candidate said %s", (ESCAPES,), None)
    assert not UNSAFE & set(TerminalSafeFormatter("%(message)s").format(record))


def test_cli_prints_a_candidate_exception_without_escape_bytes(tmp_path, tiny_llama_dir, wikitext_dir):
    """The verdict message of `prune --method FILE.py` carries the candidate's exception text."""
    candidate = tmp_path / "evil.py"
    candidate.write_text("def score(W, X):\n    raise ValueError(" + repr(ESCAPES + MARKUP) + ")\n")
    proc = subprocess.run([sys.executable, "-c", "from autoprune.cli import main; main()", "prune",
                           "--method", str(candidate), "--sparsity", "0.5", "--model", str(tiny_llama_dir),
                           "--data", str(wikitext_dir), "--nsamples", "1", "--seqlen", "32", "--eval-windows", "1",
                           "--sandbox", "process"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TERM": "xterm-256color"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "error: candidate" in proc.stderr and "ValueError" in proc.stderr and "FAKE OK" in proc.stderr
    assert not UNSAFE & set(output), [c for c in output if c in UNSAFE][:5]


# -- the replay TUI -----------------------------------------------------------------------------------------


def hostile_run(run_dir, text: str = MARKUP + ESCAPES):
    """A run whose every LLM- or candidate-written string is hostile."""
    run_dir.mkdir(parents=True, exist_ok=True)
    trace = TraceWriter(run_dir)
    trace.emit("run_started", run_id="r", config={"budget": 1, "sparsity": 0.5})
    trace.emit("node_entered", node="hypothesise", generation=1)
    trace.emit("llm_request", node="hypothesise", messages=[{"role": text, "content": text}])
    trace.emit("llm_response", node="hypothesise", text="W[/]", prompt_tokens=5, completion_tokens=2, seconds=0.1)
    trace.emit("hypothesis", name=text, statement=MARKDOWN + text, generation=1)
    trace.emit("node_left", node="hypothesise", generation=1, seconds=1.0)
    trace.emit("node_entered", node="write_code", generation=1)
    trace.emit("candidate", id="g001-a0", generation=1, origin="llm", hypothesis=text, source=FENCE_BREAK + text)
    trace.emit("node_left", node="write_code", generation=1, seconds=1.0)
    trace.emit("verdict", id="g001-a0", status="crashed", message=MARKDOWN + text, submitted=1, timings={"total": 1})
    trace.emit("fitness", id="g001-a0", level=0, nwindows=2, ppl=30.0)
    trace.emit("tournament", generation=1, standings=[{"id": "g001-a0", "rank": 1, "level": 0, "rating": 1500.0,
                                                       "ppl": 30.0, "hypothesis": text}])
    graph = {"hypotheses": {text: MARKDOWN + text},
             "evidence": [{"candidate": "g001-a0", "hypothesis": text, "verdict": "crashed", "relation": text,
                           "detail": text}], "lessons": {text: [text]}}
    trace.emit("insight", generation=1, candidate="g001-a0", hypothesis=text, relation="refutes", graph=graph)
    trace.emit("note", text=text)
    trace.emit("final_result", winner={"id": "g001-a0", "hypothesis": text, "ppl_validation": 30.0, "level": 0},
               test={"uniform": 31.0}, export=text)
    trace.emit("run_finished", summary={"winner": "g001-a0", "stop_reason": text})
    return run_dir


def rendered(renderable) -> str:
    console = Console(width=150, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text(styles=False)


def test_replay_shows_markup_and_escapes_literally_instead_of_crashing(tmp_path):
    run_dir = hostile_run(tmp_path / "run")

    async def drive():
        app = ReplayApp(run_dir, follow=False)
        async with app.run_test(size=(160, 48)) as pilot:
            for key in ("n", "n", "n", "n", "G", "c", "g", "0", "0", "1", "-", "a", "0", "enter", "/", "W", "enter"):
                await pilot.press(key)
            await pilot.pause()
            shown = {name: rendered(app.query_one(f"#{name}", Static).content)
                     for name in ("prompt", "response", "code", "verdict", "standings", "notice", "status")}
            table = app.query_one("#candidates", DataTable)
            cells = [rendered(table.get_row_at(0)[2])]
            tree = app.query_one("#insights", Tree)
            labels = [str(node.label) for node in tree.root.children]
            screen = app.export_screenshot()
        return shown, cells, labels, screen

    shown, cells, labels, screen = asyncio.run(drive())
    assert "W[/] [bold red]not bold[/]" in shown["code"] and "W[/]" in shown["verdict"]
    assert "W[/]" in cells[0] and labels and "W[/]" in labels[0]
    for text in [*shown.values(), *cells, *labels, screen]:
        assert not UNSAFE & set(text), [c for c in text if c in UNSAFE][:5]


# -- report.md and report.html ----------------------------------------------------------------------------


def test_report_markdown_keeps_hostile_text_as_text_and_fences_hold(tmp_path):
    run_dir = hostile_run(tmp_path / "run")
    files = build_report(run_dir)
    md = files.markdown.read_text()
    assert not UNSAFE & set(md)
    html = MarkdownIt("commonmark").enable("table").render(md)
    images = re.findall(r'<img src="([^"]*)"', html)
    assert images and all(re.fullmatch(r"\w+\.png", src) for src in images)     # only the report's figures
    assert "<script" not in html and "<a " not in html and "<em>em</em>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "[click](javascript:alert(1))" in html
    code_blocks = html.count("<pre><code")
    assert code_blocks == 1
    code = html.split("<pre><code", 1)[1].split("</code></pre>", 1)[0]
    assert "````" in code and "&lt;script&gt;alert(1)&lt;/script&gt;" in code and "return W.abs()" in code
    headings = [line for line in html.splitlines() if line.startswith("<h")]
    assert all("heading" not in h for h in headings)                # no heading smuggled in by the LLM
    rows = [line for line in md.splitlines() if line.startswith("| g001-a0 | crashed |")]
    assert len(rows) == 1 and rows[0].count(" | ") == 2            # the message stays in its cell


def test_report_html_escapes_hostile_text(tmp_path):
    page = build_report(hostile_run(tmp_path / "run")).html.read_text()
    assert "<img src=x" not in page and "<script>alert" not in page and "javascript:alert(1)\"" not in page
    assert not UNSAFE & set(page)
