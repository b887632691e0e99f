"""Plugins: the example package installed with pip into a fresh venv, broken plugins reported, not fatal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

from autoprune.cli import main
from autoprune.data import TextCorpus
from autoprune.errors import BadInputError
from autoprune.evaluators.base import EvalRequest, Evaluator
from autoprune.evaluators.registry import get_evaluator
from autoprune.plugins import discover, discover_all

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "autoprune-example-plugin"


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory) -> Path:
    """A fresh venv that sees this environment's packages (autoprune included) plus the pip-installed example."""
    root = tmp_path_factory.mktemp("plugin-venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    # addsitedir (not a bare path) so the editable install's own .pth finder is processed too.
    (site / "host.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    # Built from a copy (setuptools leaves build/ and *.egg-info in the source tree) with this env's
    # setuptools, installed there with the venv's own pip, offline.
    source = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(source)], check=True, cwd=root)
    wheel = next((root / "dist").glob("autoprune_example_plugin-*.whl"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, cwd=root)
    return venv


def run_in(venv: Path, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=venv.parent, timeout=timeout)


def test_installed_example_is_listed_as_loaded(plugin_venv):
    done = run_in(plugin_venv, "from autoprune.cli import main; main(['plugins'])")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "next-token-accuracy" in out and "gcot-terse" in out
    lines = out.splitlines()
    for name in ("next-token-accuracy", "gcot-terse"):
        at = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
        assert lines[at].split()[1] == "loaded"
        assert "from autoprune-example-plugin 0.1.0 at " in lines[at + 2]
    assert "perplexity" in out                                   # built-ins use the same mechanism


def test_installed_example_plugins_work_through_the_registries(plugin_venv):
    done = run_in(plugin_venv, """
        import json
        from autoprune.evaluators.registry import get_evaluator
        from autoprune.prompts import get_prompt_set, available_prompt_sets
        terse = get_prompt_set("gcot-terse")
        print(json.dumps({
            "sets": available_prompt_sets(),
            "evaluator": get_evaluator("next-token-accuracy").name,
            "reflect": terse.render("reflect", results="c2: 37.5")[-1]["content"],
            "hypothesise": terse.render("hypothesise")[-1]["content"],
            "builtin_reflect": get_prompt_set("gcot").render("reflect", results="c2: 37.5")[-1]["content"],
        }))
    """)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert {"gcot", "gcot-terse"} <= set(got["sets"]) and got["evaluator"] == "next-token-accuracy"
    assert "ONE lesson" in got["reflect"] and "c2: 37.5" in got["reflect"]        # the override
    assert "ONE lesson" not in got["builtin_reflect"]                              # gcot itself unchanged
    assert "HYPOTHESIS:" in got["hypothesise"]                                     # inherited from gcot


def test_example_metric_and_allocator_prune_through_the_cli(plugin_venv, tiny_llama_dir, wikitext_dir):
    """The plugin's metric and allocator are found by name by `prune`, like the built-ins."""
    out = plugin_venv.parent / "pruned"
    done = run_in(plugin_venv, f"""
        from autoprune.cli import main
        main(["prune", "--model", {str(tiny_llama_dir)!r}, "--method", "outlier-wanda", "--allocation",
              "depth-ramp", "--sparsity", "0.5", "--data", {str(wikitext_dir)!r}, "--nsamples", "2",
              "--seqlen", "64", "--eval-windows", "2", "--out", {str(out)!r}, "--json"])
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    blocks = summary["block_sparsity"]
    assert summary["method"] == "outlier-wanda" and summary["allocation"] == "depth-ramp"
    assert blocks[0] < 0.5 < blocks[-1]                                       # the ramp: early blocks kept
    assert abs(summary["overall_sparsity"] - 0.5) < 1e-4             # exact up to one weight per layer


@pytest.mark.slow
def test_example_prompt_set_and_evaluator_in_a_real_short_run(plugin_venv, tiny_llama_dir, wikitext_dir):
    """A real `run` (the real client against a scripted OpenAI-compatible server on loopback: the prompts,
    not the LLM, are the subject; the agent tests' sandbox; tiny model to prune) with the plugin's prompt
    set, then `eval` of the exported model with the plugin's evaluator next to perplexity."""
    from agent_support import agent_backend
    from autoprune.runlog.trace_file import read_trace
    from llm_server_support import FaultyLLMServer, agent_reply

    run_dir = plugin_venv.parent / "plugin-run"
    server = FaultyLLMServer(["ok"], reply=agent_reply)
    try:
        done = run_in(plugin_venv, f"""
            from autoprune.cli import main
            main(["run", "--budget", "1", "--model", {str(tiny_llama_dir)!r}, "--prompts", "gcot-terse",
                  "--llm-base-url", {server.base_url!r}, "--llm-model", "scripted", "--code-style", "expression",
                  "--sandbox", {agent_backend()!r}, "--data", {str(wikitext_dir)!r}, "--nsamples", "2",
                  "--seqlen", "64", "--fitness-levels", "1,2", "--test-windows", "2", "--out", {str(run_dir)!r},
                  "--json"])
        """, timeout=1200)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert server.served and not server.errors
    events = read_trace(run_dir).events
    started = next(e for e in events if e["type"] == "run_started")
    assert started["config"]["prompts"] == "gcot-terse"
    reflect_prompts = [e for e in events if e["type"] == "llm_request" and e.get("node") == "reflect"]
    assert reflect_prompts and all("ONE lesson" in json.dumps(e) for e in reflect_prompts)
    assert events[-1]["type"] == "run_finished" and (run_dir / "report" / "report.md").is_file()

    evaluated = run_in(plugin_venv, f"""
        from autoprune.cli import main
        main(["eval", {str(run_dir / "model")!r}, "--tasks", "wikitext2,next-token-accuracy",
              "--data", {str(wikitext_dir)!r}, "--seqlen", "64", "--windows", "2", "--json"])
    """, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout)
    accuracy = result["evaluators"]["next-token-accuracy"]
    assert 0.0 <= accuracy["metrics"]["top1_accuracy"] <= 1.0 and accuracy["protocol"]["split"] == "test"
    assert result["perplexity"] > 1


def test_unknown_metric_lists_plugins_too(plugin_venv):
    done = run_in(plugin_venv, """
        from autoprune.cli import main
        main(["prune", "--method", "no-such-metric", "--sparsity", "0.5"])
    """)
    assert done.returncode == 2 and "outlier-wanda" in done.stderr + done.stdout


def write_broken_distribution(folder: Path) -> None:
    """An installed distribution (just its metadata) whose entry points cannot load."""
    info = folder / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[autoprune.evaluators]\nghost = no_such_module_xyz:Evaluator\n\n"
                                           "[autoprune.prompts]\nhalf = json:no_such_attribute\n")


def test_broken_plugin_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    write_broken_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ghost = next(p for p in discover("autoprune.evaluators") if p.name == "ghost")
    assert not ghost.loaded and ghost.distribution == "broken-plugin"
    assert ghost.error.startswith("ModuleNotFoundError") and ghost.origin == str(tmp_path.resolve())
    assert any(p.name == "half" and "AttributeError" in p.error for p in discover_all())

    main(["plugins"])                                          # returns normally: nothing fatal
    out = capsys.readouterr().out
    assert "ghost          BROKEN (ModuleNotFoundError" in out and "half           BROKEN (AttributeError" in out
    assert "perplexity     loaded" in out
    main(["plugins", "--json"])
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["ghost"]["loaded"] is False and listed["perplexity"]["loaded"] is True

    assert get_evaluator("perplexity").name == "perplexity"   # the working ones still work
    with pytest.raises(BadInputError, match="unknown evaluator 'ghost'"):
        get_evaluator("ghost")


class ByteTokenizer:
    """Bytes as token ids (vocab 256), enough to feed the tiny random model real text."""

    def __call__(self, text, return_tensors="pt", add_special_tokens=False):
        class Encoded:
            input_ids = torch.tensor([list(text.encode("utf-8"))])
        return Encoded()


def test_example_evaluator_implements_the_contract(tiny_llama, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from autoprune_example_plugin.evaluator import NextTokenAccuracyEvaluator

    evaluator = NextTokenAccuracyEvaluator()
    assert isinstance(evaluator, Evaluator)
    text = "the quick brown fox jumps over the lazy dog. " * 40
    corpus = TextCorpus("repeated pangram", text, lambda: text)
    top1 = evaluator.evaluate(tiny_llama, ByteTokenizer(), EvalRequest(corpus, seqlen=32, nwindows=4))
    assert 0.0 <= top1.metrics["top1_accuracy"] < 1.0
    assert top1.protocol["nwindows"] == 4 and top1.protocol["split"] == "validation"
    every = evaluator.evaluate(tiny_llama, ByteTokenizer(),
                               EvalRequest(corpus, split="test", seqlen=32, nwindows=2, options={"top_k": 256}))
    assert every.metrics == {"top256_accuracy": 1.0}        # the whole vocabulary always holds the next token
