"""Report and replay over a run folder written by the real agent graph (tiny Llama, process sandbox,
scripted LLM from tests/agent_support.py): the payloads are the agent's own, not the sample's."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from textual.widgets import DataTable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory):
    support = pytest.importorskip("agent_support")
    from autoprune.agent.run import ProgramSearch
    from autoprune.agent.runtime.mode import Run
    from autoprune.agent.runtime.run import drive
    from conftest import tiny_llama_config
    from transformers import LlamaForCausalLM

    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    run_dir = tmp_path_factory.mktemp("agent") / "run"
    run_dir.mkdir()
    services = support.tiny_services(model, run_dir, support.ScriptedLLM(support.default_replies()), budget=2)
    services.trace.emit("run_started", run_id="tiny", config=services.config.model_dump(mode="json"),
                        model="tiny-llama", protocol={"levels": services.fitness.levels, "seqlen": 32})
    with sqlite3.connect(run_dir / "checkpoints.sqlite", check_same_thread=False) as conn:
        state = drive(ProgramSearch(services.config), services, conn, Run(run_dir, "tiny", False, services.trace),
                      live=False)
    services.trace.emit("run_finished", summary={"stop_reason": state.get("stop_reason")})
    return run_dir


def test_report_of_a_real_agent_run(agent_run):
    from autoprune.reports import build_report, load_run

    view = load_run(agent_run)
    assert view.status == "finished" and not view.problems
    seeds = [c for c in view.candidates.values() if c.is_seed]
    assert seeds and all(c.origin == "seed" and c.submitted is None for c in seeds)
    assert [c.submitted for c in view.submitted_candidates()] == [1, 2]
    assert "uniform" in set(view.block_sparsities()) and len(view.block_sparsities()) >= 2 and view.final_perplexities()
    files = build_report(agent_run)
    assert set(files.figures) == {"fitness_over_budget", "verdicts", "block_sparsity", "time_tokens"}
    md = files.markdown.read_text()
    assert "## Final perplexity" in md and "crashed" in md and "Paired comparison" in md


def test_replay_of_a_real_agent_run(agent_run):
    from autoprune.tui import ReplayApp

    async def drive():
        app = ReplayApp(agent_run)
        async with app.run_test(size=(160, 48)) as pilot:
            nodes = {s.node for s in app.live.view.steps}
            assert {"verify", "evaluate", "tournament", "write_code", "reflect", "finalize"} <= nodes
            await pilot.press("slash", *"crashed", "enter")
            await pilot.pause()
            cand = app.live.view.candidates[app.candidate_id]
            assert cand.status == "crashed" and cand.message
            assert app.query_one("#candidates", DataTable).row_count == len(app.live.view.candidates)
    asyncio.run(drive())
