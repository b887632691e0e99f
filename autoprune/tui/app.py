"""`ReplayApp`: a terminal UI over a run's trace (finished, or still being written).

Left: the timeline of graph steps and the candidate table. Right: the selected
step's prompt and response, the selected candidate's code and verdict, the
tournament standings at that step, and the insight graph. The data comes from
`autoprune.reports` (the same RunView the report uses); this module only lays it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Input, Label, Static, TabbedContent, TabPane, Tree

from autoprune.reports.trace_follow import LiveRun
from autoprune.safe_text import terminal_safe
from autoprune.tui import views
from autoprune.tui.insight_tree import fill_insight_tree
from autoprune.tui.table_sync import add_columns, sync_rows

SPEEDS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)      # steps per second during playback
POLL_SECONDS = 0.5


class ReplayApp(App):
    TITLE = "autoprune replay"
    # Inline (not a .tcss file) so the wheel needs no package data for the TUI.
    CSS = """
    #left { width: 45%; }
    #detail { width: 55%; }
    #timeline { height: 3fr; }
    #candidates { height: 2fr; }
    .heading { text-style: bold; background: $boost; width: 100%; }
    #notice { background: $warning 30%; color: $text; padding: 0 1; }
    #status { background: $panel; padding: 0 1; }
    """
    BINDINGS = [
        Binding("n,]", "step(1)", "next step"), Binding("p,[", "step(-1)", "prev step"),
        Binding("g,home", "jump_to(0)", "first", show=False), Binding("G,end", "jump_to(-1)", "last", show=False),
        Binding("space", "toggle_play", "play/pause"), Binding("+,=", "speed(1)", "faster"),
        Binding("-", "speed(-1)", "slower"), Binding("c", "ask('candidate')", "jump to candidate"),
        Binding("/", "ask('search')", "search"), Binding(".", "search_next", "next match"),
        Binding("f", "toggle_follow", "follow"), Binding("escape", "close_ask", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, run_dir: Path, *, follow: bool = True, speed: float = 2.0):
        super().__init__()
        self.live = LiveRun(run_dir)
        self.follow = follow
        self.speed_index = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - speed))
        self.playing = False
        self.step_index = 0
        self.candidate_id: Optional[str] = None
        self.query_text = ""
        self.ask_mode = "search"
        self._play_timer = None
        self._shown_insight: Optional[dict] = {}     # not None: the first sync always fills the tree

    # -- layout --------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="notice")
        with Horizontal():
            with Vertical(id="left"):
                yield Label("Timeline", classes="heading")
                yield DataTable(id="timeline", cursor_type="row", zebra_stripes=True)
                yield Label("Candidates", classes="heading")
                yield DataTable(id="candidates", cursor_type="row", zebra_stripes=True)
            with TabbedContent(id="detail"):
                for name in ("prompt", "response", "code", "verdict", "standings"):
                    with TabPane(name.capitalize(), id=f"tab-{name}"):
                        with VerticalScroll():
                            yield Static(id=name)
                with TabPane("Insights", id="tab-insights"):
                    yield Tree("insight graph", id="insights")
        yield Static(id="status")
        yield Input(id="ask", placeholder="search")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = terminal_safe(self.live.run_dir, keep_newlines=False)
        add_columns(self.query_one("#timeline", DataTable), views.TIMELINE_COLUMNS)
        add_columns(self.query_one("#candidates", DataTable), views.CANDIDATE_COLUMNS)
        self.query_one("#ask", Input).display = False
        self.sync()
        self.query_one("#timeline", DataTable).focus()
        if self.follow and self.live.view.status == "running":
            self.action_jump_to(-1)          # a live run: start at its newest step and tail it
        elif self.live.view.steps:
            self.show_step(0)
        self.set_interval(POLL_SECONDS, lambda: self.while_mounted(self.poll))

    def while_mounted(self, tick) -> None:
        """Run a timer callback unless the app is shutting down (its widgets already gone)."""
        try:
            tick()
        except NoMatches:
            pass

    # -- data ----------------------------------------------------------------------------------------------

    def poll(self) -> None:
        was_at_end = self.step_index >= len(self.live.view.steps) - 1
        if self.follow and self.live.refresh():
            self.sync()
            if was_at_end and not self.playing:
                self.action_jump_to(-1)
            else:                            # stay put, but show what arrived for the selected step
                self.show_step_panels(self.live.view.steps[self.step_index])
                if self.candidate_id is not None:
                    self.show_candidate(self.candidate_id)
        self.show_status()

    def sync(self) -> None:
        view = self.live.view
        sync_rows(self.query_one("#timeline", DataTable),
                  [(str(s.index), views.timeline_row(view, s)) for s in view.steps])
        sync_rows(self.query_one("#candidates", DataTable),
                  [(c.id, views.candidate_row(c)) for c in view.candidates.values()])
        if view.insight is not self._shown_insight:     # refilling collapses the tree: only on change
            fill_insight_tree(self.query_one("#insights", Tree), view.insight)
            self._shown_insight = view.insight
        notices = self.live.notices()
        self.query_one("#notice", Static).update(views.plain("\n".join(f"⚠ {n}" for n in notices)))
        self.query_one("#notice", Static).display = bool(notices)
        self.show_status()

    def show_status(self) -> None:
        view = self.live.view
        state = "playing" if self.playing else "paused"
        follow = ", following the trace" if self.follow and view.status == "running" else ""
        where = f"step {self.step_index + 1}/{len(view.steps)}" if view.steps else "no steps yet"
        self.query_one("#status", Static).update(views.plain(
            f"{where} · run {view.status}{follow} · {state} at "
            f"{SPEEDS[self.speed_index]:g} steps/s · {len(view.candidates)} candidates"))

    # -- selection -----------------------------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = str(event.row_key.value)
        if event.data_table.id == "timeline":
            self.show_step(int(key))
        else:
            self.show_candidate(key)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "candidates":      # Enter (or a click) on a candidate: go to where it was written
            self.jump_to_candidate(str(event.row_key.value))

    def show_step(self, index: int) -> None:
        view = self.live.view
        if not 0 <= index < len(view.steps):
            return
        self.step_index = index
        step = view.steps[index]
        self.show_step_panels(step)
        if step.candidate_ids:
            self.select_candidate(step.candidate_ids[-1])
        self.show_status()

    def show_step_panels(self, step) -> None:
        self.query_one("#prompt", Static).update(views.prompt_renderable(step))
        self.query_one("#response", Static).update(views.response_renderable(step))
        self.query_one("#standings", Static).update(views.standings_renderable(self.live.view, step))

    def select_candidate(self, cid: str) -> None:
        table = self.query_one("#candidates", DataTable)
        if cid in table.rows:
            table.move_cursor(row=table.get_row_index(cid))
        self.show_candidate(cid)

    def show_candidate(self, cid: str) -> None:
        self.candidate_id = cid
        self.query_one("#code", Static).update(views.code_renderable(self.live.view, cid))
        self.query_one("#verdict", Static).update(views.verdict_renderable(self.live.view, cid))

    # -- actions -------------------------------------------------------------------------------------------

    def action_step(self, delta: int) -> None:
        self.action_jump_to(max(0, min(self.step_index + delta, len(self.live.view.steps) - 1)))

    def action_jump_to(self, index: int) -> None:
        steps = len(self.live.view.steps)
        if steps == 0:
            return
        index = index % steps
        self.query_one("#timeline", DataTable).move_cursor(row=index)
        self.show_step(index)

    def action_toggle_play(self) -> None:
        self.playing = not self.playing
        self.restart_timer()
        self.show_status()

    def action_speed(self, delta: int) -> None:
        self.speed_index = max(0, min(self.speed_index + delta, len(SPEEDS) - 1))
        self.restart_timer()
        self.show_status()

    def restart_timer(self) -> None:
        if self._play_timer is not None:
            self._play_timer.stop()
            self._play_timer = None
        if self.playing:
            self._play_timer = self.set_interval(1.0 / SPEEDS[self.speed_index],
                                                 lambda: self.while_mounted(self.play_tick))

    def play_tick(self) -> None:
        at_end = self.step_index >= len(self.live.view.steps) - 1
        if not at_end:
            self.action_step(1)
        elif not (self.follow and self.live.view.status == "running"):
            self.playing = False         # nothing more will come: stop at the last step
            self.restart_timer()
            self.show_status()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.show_status()

    def action_ask(self, mode: str) -> None:
        self.ask_mode = mode
        ask = self.query_one("#ask", Input)
        ask.placeholder = "candidate id, then Enter" if mode == "candidate" else "search text, then Enter"
        ask.value = ""
        ask.display = True
        ask.focus()

    def action_close_ask(self) -> None:
        ask = self.query_one("#ask", Input)
        ask.display = False
        self.query_one("#timeline", DataTable).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.action_close_ask()
        if self.ask_mode == "candidate":
            self.jump_to_candidate(text)
        else:
            self.query_text = text.lower() or self.query_text
            self.action_search_next()

    def jump_to_candidate(self, cid: str) -> None:
        view = self.live.view
        if cid not in view.candidates:
            self.notify(terminal_safe(f"no candidate {cid!r}"), severity="warning", markup=False)
            return
        first = next((s.index for s in view.steps if cid in s.candidate_ids), None)
        if first is not None:
            self.action_jump_to(first)
        self.select_candidate(cid)
        self.query_one("#detail", TabbedContent).active = "tab-code"

    def action_search_next(self) -> None:
        """The next step after the selected one whose text contains the query (wrapping around)."""
        if not self.query_text:
            return
        steps = self.live.view.steps
        for offset in range(1, len(steps) + 1):
            step = steps[(self.step_index + offset) % len(steps)]
            if self.query_text in views.step_search_text(self.live.view, step):
                self.action_jump_to(step.index)
                return
        self.notify(terminal_safe(f"no step matches {self.query_text!r}"), severity="warning", markup=False)
