"""GCoT prompt rendering, prompt sets from entry points, single-template overrides, lengths."""

from __future__ import annotations

import pytest

from autoprune.errors import BadInputError
from autoprune.prompts import NODES, PromptSet, available_prompt_sets, get_prompt_set, load_folder
from autoprune.prompts.registry import split_messages

ARCHIVE = [{"code": "def score(W, X):\n    return W.abs() * X.norm\n", "hypothesis": "wanda: big inputs",
            "fitness": 31.42, "reflection": "input norm matters", "expression": "W.abs() * X.norm"}]
CONTEXT = dict(model_name="SmolLM2-135M-Instruct", sparsity=0.6, pattern="2:4",
               model_profile="30 blocks; activation kurtosis peaks in blocks 3-5 (max 412)",
               analysis="- outliers in early blocks\n- down_proj inputs are heavy-tailed",
               archive=ARCHIVE, archive_brief=ARCHIVE, insights="- wanda: big inputs [supported 2x]",
               hypothesis="outlier-aware: protect channels with large max_abs", n_hypotheses=3,
               error="Line 2: import of 'numpy' is not allowed", source="import numpy\ndef score(W, X): ...",
               expression="W.abs() * X.nrm", results="#1 wanda 31.4\n#2 magnitude 58.0")


def render_all(prompt_set: PromptSet, **extra) -> dict[str, list[dict]]:
    out = {}
    for node in NODES:
        for style in ("program", "expression"):
            out[f"{node}/{style}"] = prompt_set.render(node, code_style=style, **{**CONTEXT, **extra})
    return out


def test_builtin_set_is_registered_through_the_entry_point():
    assert "gcot" in available_prompt_sets()
    assert get_prompt_set().name == "gcot"


def test_every_node_renders_system_first_and_user_last():
    for key, messages in render_all(get_prompt_set()).items():
        assert messages[0]["role"] == "system", key
        assert messages[-1]["role"] == "user", key
        assert all(m["content"].strip() for m in messages), key
        assert all("{{" not in m["content"] and "{%" not in m["content"] for m in messages), key


def test_context_reaches_the_prompts():
    rendered = render_all(get_prompt_set())
    analyse = rendered["analyse/program"][-1]["content"]
    assert "60% sparsity (2:4)" in analyse and "kurtosis" in analyse and "31.42" in analyse
    program = rendered["write_code/program"][-1]["content"]
    assert "def score(W, X)" in program and "outlier-aware" in program and "X.norm" in program
    assert "return W.abs() * X.norm" in program           # the archive's code is shown
    hyp = rendered["hypothesise/program"][-1]["content"]
    assert "3 NEW hypotheses" in hyp and "HYPOTHESIS:" in hyp
    repair = rendered["repair/program"][-1]["content"]
    assert "import of 'numpy'" in repair and "import numpy" in repair
    assert "X.nrm" in rendered["repair/expression"][-1]["content"]
    assert "LESSON:" in rendered["reflect/program"][-1]["content"]


def test_expression_prompt_is_few_shot_and_rotates_examples():
    ps = get_prompt_set()
    first = ps.render("write_code", code_style="expression", hypothesis="h", example_offset=0)
    later = ps.render("write_code", code_style="expression", hypothesis="h", example_offset=4)
    shots = [m["content"] for m in first if m["role"] == "assistant"]
    assert len(shots) == 3 and all(s.startswith("```python\n") for s in shots)
    assert shots != [m["content"] for m in later if m["role"] == "assistant"]
    assert first[-1] == {"role": "user", "content": "Hypothesis: h"}


def test_missing_variable_in_a_template_fails_loudly():
    broken = PromptSet("broken", {"analyse": "@@ user\n{{ no_such_variable }}"}, base="gcot")
    with pytest.raises(Exception, match="no_such_variable"):
        broken.merged_over(get_prompt_set()).render("analyse")


def test_single_template_override_merges_over_the_base():
    custom = PromptSet("mine", {"reflect": "@@ user\nJust say why {{ results }} happened."}, base="gcot")
    merged = custom.merged_over(get_prompt_set())
    assert merged.name == "mine"
    assert merged.render("reflect", results="X")[-1]["content"] == "Just say why X happened."
    # untouched templates and the shared system prompt come from gcot
    assert merged.render("analyse", **CONTEXT)[0] == get_prompt_set().render("analyse", **CONTEXT)[0]


def test_overriding_an_included_template_changes_every_prompt_using_it():
    custom = PromptSet("c", {"contract": "CONTRACT-V2"}).merged_over(get_prompt_set())
    assert "CONTRACT-V2" in custom.render("write_code", code_style="program", **CONTEXT)[-1]["content"]
    assert "CONTRACT-V2" in custom.render("hypothesise", **CONTEXT)[-1]["content"]


def test_folder_plugin_loads(tmp_path):
    (tmp_path / "hypothesise.txt").write_text("@@ system\nBe bold.\n@@ user\nOne idea about {{ model_name }}.")
    plugin = load_folder(tmp_path, "bold", base="gcot").merged_over(get_prompt_set())
    messages = plugin.render("hypothesise", model_name="M")
    assert messages == [{"role": "system", "content": "Be bold."}, {"role": "user", "content": "One idea about M."}]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no \\*.txt templates"):
        load_folder(tmp_path / "empty", "x")


def test_unknown_set_and_node_are_user_errors():
    with pytest.raises(BadInputError, match="unknown prompt set 'nope'.*gcot"):
        get_prompt_set("nope")
    with pytest.raises(BadInputError, match="no template for node"):
        get_prompt_set().render("dance")


def test_split_messages_handles_text_before_markers():
    assert split_messages("hello\n@@ assistant\nhi\n@@ user\n\n") == [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]


def test_prompts_fit_the_embedded_model_context():
    """Measured with the embedded model's own tokenizer: small models need short prompts."""
    from transformers import AutoTokenizer

    from autoprune.models import cache_root
    folder = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("embedded model not converted yet")
    tok = AutoTokenizer.from_pretrained(folder)
    lengths = {key: len(tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"])
               for key, messages in render_all(get_prompt_set()).items()}
    assert min(lengths.values()) > 50, lengths
    assert lengths["write_code/expression"] < 450, lengths
    assert max(lengths.values()) < 1200, lengths        # far below the 8k context, leaves room to answer


def test_examples_vary_with_the_hypothesis_when_no_offset_is_given():
    ps = get_prompt_set()
    shots = {tuple(m["content"] for m in ps.render("write_code", code_style="expression", hypothesis=h)
                   if m["role"] == "assistant")
             for h in ("depth matters", "variance matters", "outliers matter", "rows matter")}
    assert len(shots) > 1


def test_best_metrics_state_the_windows_their_perplexities_share():
    gcot = get_prompt_set("gcot")
    entries = [{"expression": "W.abs() * X.max_abs", "fitness": 49.19, "windows": 8},
               {"expression": "W.abs() * X.norm", "fitness": 58.03, "windows": 8}]
    for node in ("analyse", "hypothesise"):
        text = gcot.render(node, archive_brief=entries, archive_windows=8)[-1]["content"]
        assert "validation perplexity on the same 8 windows" in text
        assert text.index("49.19") < text.index("58.03")
        assert "same" not in gcot.render(node)[-1]["content"].split("Best metrics so far")[1].splitlines()[0]
    small = gcot.render("hypothesise", code_style="expression", elite=entries)[-1]["content"]
    assert "(perplexity 49.2 on 8 validation windows)" in small
