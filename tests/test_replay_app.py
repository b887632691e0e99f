"""The replay app driven headless with textual's Pilot: keys pressed, what the panels show asserted."""

from __future__ import annotations

import asyncio

import pytest
from rich.console import Console
from textual.widgets import DataTable, Static, TabbedContent, Tree

from autoprune.agent.trace import TraceWriter
from autoprune.errors import TraceError
from autoprune.tui import ReplayApp
from test_report_sample import truncate_last_line, write_sample_run

SIZE = (160, 48)


def shown(app: ReplayApp, selector: str) -> str:
    """The text a Static panel shows, rendered as the terminal would."""
    console = Console(width=150, record=True, file=open("/dev/null", "w"))
    console.print(app.query_one(selector, Static).content)
    return console.export_text()


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def sample_run(tmp_path):
    return write_sample_run(tmp_path / "run")


def test_next_previous_step_show_prompt_response_code_and_verdict(sample_run):
    async def drive():
        app = ReplayApp(sample_run)
        async with app.run_test(size=SIZE) as pilot:
            assert app.step_index == 0 and "step 1/15 · run finished" in shown(app, "#status")
            await pilot.press("n", "n", "n", "n")          # -> step 5: write_code of c1
            await pilot.pause()
            assert app.step_index == 4 and "step 5/15" in shown(app, "#status")
            assert "Write score() for outlier-skew" in shown(app, "#prompt")
            assert "os.system" in shown(app, "#response")
            assert "import os" in shown(app, "#code")
            verdict = shown(app, "#verdict")
            assert "rejected-static" in verdict and "import of 'os' is not allowed" in verdict
            await pilot.press("p")
            await pilot.pause()
            assert app.step_index == 3 and "HYPOTHESIS outlier-skew" in shown(app, "#response")
            await pilot.press("G")
            await pilot.pause()
            assert app.step_index == 14
    run(drive())


def test_candidate_table_lists_verdict_fitness_and_rating(sample_run):
    async def drive():
        app = ReplayApp(sample_run)
        async with app.run_test(size=SIZE):
            table = app.query_one("#candidates", DataTable)
            assert table.row_count == 5
            assert table.get_row("c2") == ["c2", "1", "outlier-skew", "ok", "1", "37.50", "1580"]
            assert table.get_row("c1")[3] == "rejected-static"
            svg = app.export_screenshot()
            assert "rejected-static" in svg and "outlier-skew" in svg
    run(drive())


def test_jump_to_candidate_shows_its_code(sample_run):
    async def drive():
        app = ReplayApp(sample_run)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("c", "c", "2", "enter")
            await pilot.pause()
            assert app.candidate_id == "c2"
            assert app.query_one("#detail", TabbedContent).active == "tab-code"
            assert "max_abs" in shown(app, "#code") and "repairs c1" in shown(app, "#code")
            assert app.live.view.steps[app.step_index].node == "write_code"
            await pilot.press("c", "z", "z", "enter")          # unknown id: a warning, nothing moves
            await pilot.pause()
            assert app.candidate_id == "c2"
            table = app.query_one("#candidates", DataTable)
            table.focus()
            await pilot.press("down", "enter")                  # Enter on a row: to where c3 was written
            await pilot.pause()
            assert app.candidate_id == "c3" and app.step_index == 9 and "crashed" in shown(app, "#verdict")
    run(drive())


def test_search_jumps_to_matching_steps(sample_run):
    async def drive():
        app = ReplayApp(sample_run)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("slash", *"lesson", "enter")
            await pilot.pause()
            assert app.live.view.steps[app.step_index].node == "reflect"
            await pilot.press("slash", *"rejected", "enter")
            await pilot.pause()
            first = app.step_index
            await pilot.press("full_stop")
            await pilot.pause()
            assert app.live.view.steps[first].candidate_ids == ["c1"] and app.step_index > first
    run(drive())


def test_play_pause_and_speed(sample_run):
    async def drive():
        app = ReplayApp(sample_run, speed=2.0)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("plus")
            assert "paused at 4 steps/s" in shown(app, "#status")
            await pilot.press("minus", "minus")
            assert "paused at 1 steps/s" in shown(app, "#status")
            await pilot.press("space")
            assert app.playing
            await wait_until(pilot, lambda: app.step_index >= 1)
            await pilot.press("space")
            assert not app.playing
            stopped_at = app.step_index
            await pilot.pause(1.5)                            # longer than one tick at 1 step/s
            assert app.step_index == stopped_at
            await pilot.press("plus", "plus", "plus", "plus", "space")   # 16 steps/s, to the end
            assert "at 16 steps/s" in shown(app, "#status")
            await wait_until(pilot, lambda: not app.playing)  # a finished run: playback stops at the end
            assert app.step_index == 14
    run(drive())


async def wait_until(pilot, condition, timeout: float = 20.0) -> None:
    """Timers run late on a busy machine: poll for the outcome instead of sleeping a fixed time."""
    waited = 0.0
    while not condition():
        assert waited < timeout, "condition not reached"
        await pilot.pause(0.1)
        waited += 0.1


def test_standings_and_insight_tree(sample_run):
    async def drive():
        app = ReplayApp(sample_run)
        async with app.run_test(size=SIZE) as pilot:
            assert "No tournament yet" in shown(app, "#standings")
            await pilot.press("slash", *"standings", "enter")
            await pilot.pause()
            standings = shown(app, "#standings")
            assert "Tournament standings" in standings and "1580" in standings
            tree = app.query_one("#insights", Tree)
            labels = [str(n.label) for n in tree.root.children]
            assert labels and labels[0].startswith("outlier-skew")
            leaves = [str(n.label) for n in tree.root.children[0].children]
            assert any("supports: c2" in leaf for leaf in leaves)
            assert any("lesson: max_abs helps" in leaf for leaf in leaves)
    run(drive())


def test_follows_a_run_in_progress(tmp_path):
    run_dir = write_sample_run(tmp_path / "run", finished=False)

    async def drive():
        app = ReplayApp(run_dir)
        async with app.run_test(size=SIZE) as pilot:
            before = app.query_one("#timeline", DataTable).row_count
            assert app.live.view.status == "running"
            assert app.step_index == before - 1                 # a live run opens at its newest step
            trace = TraceWriter(run_dir)
            trace.emit("node_entered", node="finalize", generation=1)
            trace.emit("final_result", winner={"id": "c2"}, test={"sdsa": 37.0})
            trace.emit("node_left", node="finalize", generation=1, seconds=1.0)
            trace.emit("run_finished", summary={"winner": "c2"})
            await wait_until(pilot, lambda: app.live.view.status == "finished")   # the next poll reads them
            await pilot.pause()
            assert app.query_one("#timeline", DataTable).row_count == before + 2
            assert app.live.view.status == "finished"
            assert app.step_index == before + 1             # it was at the end, so it followed
            assert "run finished" in shown(app, "#status")
    run(drive())


def test_truncated_trace_opens_with_a_notice(sample_run):
    truncate_last_line(sample_run)

    async def drive():
        app = ReplayApp(sample_run)
        async with app.run_test(size=SIZE):
            notice = app.query_one("#notice", Static)
            assert notice.display and "last line is incomplete" in shown(app, "#notice")
            assert app.query_one("#timeline", DataTable).row_count == 14   # all but the cut event
    run(drive())


def test_malformed_line_is_skipped_with_a_notice(sample_run):
    with (sample_run / "trace.jsonl").open("a") as fh:
        fh.write("{not json\n")
    TraceWriter(sample_run).emit("note", text="after the bad line")

    async def drive():
        app = ReplayApp(sample_run)
        async with app.run_test(size=SIZE):
            assert "skipped malformed line" in shown(app, "#notice")
            assert app.live.view.steps[-1].node == "(note)"
    run(drive())


def test_not_a_run_folder_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError):
        ReplayApp(tmp_path)


def test_an_empty_trace_opens_and_fills_in_as_events_arrive(tmp_path):
    (tmp_path / "trace.jsonl").write_text("")

    async def drive():
        app = ReplayApp(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("n", "p", "space", "G", "full_stop")
            await pilot.pause()
            assert "no steps yet" in shown(app, "#status")
            TraceWriter(tmp_path).emit("node_entered", node="analyse", generation=1)
            await wait_until(pilot, lambda: app.query_one("#timeline", DataTable).row_count == 1)
            assert app.query_one("#timeline", DataTable).get_row("0")[2:5] == ["analyse", "1", "running"]
    run(drive())
