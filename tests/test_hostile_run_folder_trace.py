"""A hostile trace.jsonl: lines of every broken kind (wrong types, bad UTF-8, huge, deep, cut by a kill)
are skipped and reported by every reader (resume, report, replay); paths in the trace never lead a
report out of the run folder."""

from __future__ import annotations

import asyncio
from pathlib import Path

from autoprune.agent.runtime.folder import original_run_id
from autoprune.agent.trace import TraceWriter
from autoprune.reports.build import build_report
from autoprune.reports.run_data import load_run
from autoprune.reports.trace_follow import LiveRun
from autoprune.runlog.trace_file import read_trace

from hostile_folder_support import assert_clean_refusal, cli


# -- trace.jsonl ------------------------------------------------------------------------------------------


def good_trace(run_dir: Path) -> None:
    trace = TraceWriter(run_dir)
    trace.emit("run_started", run_id="orig", config={"budget": 1, "sparsity": "half"})
    trace.emit("node_entered", node="write_code", generation=1)
    trace.emit("candidate", id="c1", generation=1, origin="llm", hypothesis="h", source="def score(W, X):\n  pass\n")


BAD_LINES = {
    "seq": b'{"v": 1, "seq": "7", "ts": 1.0, "type": "note", "text": "x"}',
    "run_id": b'{"v": 1, "seq": 8, "ts": 1.0, "type": "run_started", "config": {}}',
    "type": b'{"v": 1, "seq": 9, "ts": 1.0, "type": ["note"]}',
    "list": b'[1, 2, 3]',
    "utf8": b'{"v": 1, "seq": 10, "ts": 1.0, "type": "note", "text": "\xff\xfe"}',
    "timings": b'{"v": 1, "seq": 11, "ts": 1.0, "type": "verdict", "id": "c1", "timings": [1, 2]}',
    "standings": b'{"v": 1, "seq": 12, "ts": 1.0, "type": "tournament", "standings": 5}',
    "id": b'{"v": 1, "seq": 13, "ts": 1.0, "type": "verdict", "id": ["c1"], "status": "ok"}',
    "deep": b"[" * 100_000,
    "nan-ts": b'{"v": 1, "seq": 14, "ts": NaN, "type": "note"}',
}


def hostile_trace(run_dir: Path, *, huge: int = 100 * 2**20) -> Path:
    run_dir.mkdir(exist_ok=True)
    good_trace(run_dir)
    with (run_dir / "trace.jsonl").open("ab") as fh:
        for line in BAD_LINES.values():
            fh.write(line + b"\n")
        fh.write(b'{"v": 1, "seq": 20, "ts": 2.0, "type": "note", "text": "' + b"A" * huge + b'"}\n')
        fh.write(b'{"v": 1, "seq": 21, "ts": 3.0, "type": "verdict", "id": "c1", "status": "crashed", '
                 b'"message": "boom"}\n')
        fh.write(b'{"v": 1, "seq": 22, "ts": 4.0, "type": "no')              # cut by kill -9
    return run_dir


def test_trace_reader_skips_and_reports_every_bad_line(tmp_path):
    run_dir = hostile_trace(tmp_path / "run")
    result = read_trace(run_dir)
    assert [e["seq"] for e in result.events] == [1, 2, 3, 21]
    assert len(result.problems) == len(BAD_LINES) + 2                    # + the huge line, + the cut one
    assert all("skipped" in p for p in result.problems)
    assert "longer than" in result.problems[-2] and "truncated last line" in result.problems[-1]
    assert "seq: Input should be a valid integer" in result.problems[0]
    assert "run_id: Field required" in result.problems[1]


def test_resume_report_and_replay_readers_survive_the_hostile_trace(tmp_path):
    run_dir = hostile_trace(tmp_path / "run")
    writer = TraceWriter(run_dir)                     # what --resume does first: continue the numbering
    assert writer.emit("note", text="resumed")["seq"] == 22
    assert original_run_id(run_dir) == "orig"
    view = load_run(run_dir)
    assert view.candidates["c1"].status == "crashed" and view.candidates["c1"].message == "boom"
    files = build_report(run_dir)
    assert "Notice: trace.jsonl:" in files.markdown.read_text() and files.html.is_file()
    live = LiveRun(run_dir)
    assert len(live.view.problems) == len(BAD_LINES) + 2 and live.view.candidates["c1"].status == "crashed"


def test_replay_app_opens_the_hostile_trace(tmp_path):
    from autoprune.tui import ReplayApp

    run_dir = hostile_trace(tmp_path / "run", huge=9 * 2**20)

    async def drive():
        app = ReplayApp(run_dir, follow=False)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("G")
            await pilot.pause()
            assert app.query_one("#notice").display
    asyncio.run(drive())


def test_cli_report_of_the_hostile_trace_prints_notices_not_tracebacks(tmp_path):
    run_dir = hostile_trace(tmp_path / "run", huge=9 * 2**20)
    proc = cli("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("notice: trace.jsonl:") == len(BAD_LINES) + 2


def test_a_folder_that_is_no_run_is_one_clear_error(tmp_path):
    proc = cli("report", str(tmp_path))
    assert_clean_refusal(proc, "trace.jsonl")


# -- paths in the trace -----------------------------------------------------------------------------------


def test_report_never_reads_a_file_outside_the_run_folder(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-TOKEN")
    run_dir = tmp_path / "run"
    (run_dir / "candidates").mkdir(parents=True)
    (run_dir / "candidates" / "link.py").symlink_to(secret)
    (run_dir / "candidates" / "inside.py").write_text("def score(W, X):\n    return W.abs()  # INSIDE\n")
    (run_dir / "candidates" / "alias.py").symlink_to(run_dir / "candidates" / "inside.py")
    trace = TraceWriter(run_dir)
    trace.emit("run_started", run_id="r")
    for cid, path in (("up", "../secret.txt"), ("abs", str(secret)), ("link", "candidates/link.py"),
                      ("../secret", None), ("alias", "candidates/alias.py")):
        trace.emit("candidate", id=cid, generation=1, origin="llm", hypothesis="h", path=path)
        trace.emit("fitness", id=cid, level=0, ppl=30.0 if cid != "alias" else 10.0)
    view = load_run(run_dir)
    for cid in ("up", "abs", "link", "../secret"):
        assert view.candidate_source(cid) is None, cid
    assert "INSIDE" in view.candidate_source("alias")            # a link that stays inside is fine
    files = build_report(run_dir)
    assert "SECRET-TOKEN" not in files.markdown.read_text() + files.html.read_text()
