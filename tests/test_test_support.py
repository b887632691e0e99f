"""The test suite's own guards: the scripted LLM server reads the node from the prompt, and a Docker
test that would skip where Docker is required fails instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_server_support import node_of

pytest_plugins = ["pytester"]

CONTEXT = {"hypothesis": "outliers: large inputs matter", "error": "score() raised", "source": "def score(W, X): ...",
           "expression": "W.abs()", "results": "W.abs(): perplexity 70"}


@pytest.mark.parametrize("style", ["expression", "program"])
@pytest.mark.parametrize("template, node", [("analyse", "analyse"), ("hypothesise", "hypothesise"),
                                            ("write_code", "write_code"), ("repair", "write_code"),
                                            ("reflect", "reflect")])
def test_the_scripted_server_reads_the_node_from_the_rendered_prompt(template, node, style):
    from autoprune.prompts.registry import get_prompt_set

    messages = get_prompt_set("gcot").render(template, code_style=style, **CONTEXT)
    assert node_of(messages) == node
    assert node_of(messages, ("analyse", "reflect")) == node          # the prompt decides, not the script


def test_a_prompt_from_no_template_goes_to_the_only_scripted_node():
    messages = [{"role": "user", "content": "why?"}]
    assert node_of(messages, ("reflect",)) == "reflect"
    assert node_of(messages, ("analyse", "reflect")) is None


def test_a_scripted_llm_is_the_real_client_over_http():
    from agent_support import ScriptedLLM
    from autoprune.agent.llm import LLMClient
    from autoprune.prompts.registry import get_prompt_set

    llm = ScriptedLLM({"analyse": ["- one", "- two"], "reflect": ["LESSON: x"]})
    analyse = get_prompt_set("gcot").render("analyse")
    assert isinstance(llm, LLMClient) and llm.base_url.startswith("http://127.0.0.1:")
    assert [llm.chat(analyse, node="analyse").text for _ in range(3)] == ["- one", "- two", "- two"]
    assert [node for node, _ in llm.requests] == ["analyse"] * 3 and llm.requests[0][1] == analyse
    assert llm.usage_by_node()["analyse"]["calls"] == 3 and len(llm.server.served) == 3


DOCKER_SKIP = """
import pytest

@pytest.mark.docker
def test_marked():
    pytest.skip("no engine")

def test_reason():
    pytest.skip("Docker is not reachable")

def test_other():
    pytest.skip("tmux is not installed")
"""


@pytest.mark.parametrize("required, outcomes", [("1", {"failed": 2, "skipped": 1}), ("0", {"skipped": 3})])
def test_a_docker_skip_fails_where_docker_is_required(pytester, monkeypatch, required, outcomes):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(DOCKER_SKIP)
    monkeypatch.setenv("AUTOPRUNE_REQUIRE_DOCKER", required)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(**outcomes)
    if required == "1":
        result.stdout.fnmatch_lines(["*AUTOPRUNE_REQUIRE_DOCKER=1, but this Docker test was skipped*"])
