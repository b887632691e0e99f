"""A hostile config.json: one that sends the prompts (and the user's API key) elsewhere, picks a weaker
sandbox or another executor, or holds wrong types, ranges, keys or bytes. Each ends with exit code 2
and one line (BadInputError), never the attack."""

from __future__ import annotations

import json

import pytest

from autoprune.agent.config import RunConfig, load_config, resume_config
from autoprune.errors import BadInputError

from hostile_folder_support import assert_clean_refusal, attacker, cli  # noqa: F401 - attacker: a fixture


# -- config.json ----------------------------------------------------------------------------------------


GUARDED = [
    ({"llm_base_url": "http://evil.example:8000/v1"}, {}, "llm_base_url"),
    ({"llm_base_url": "http://evil.example:8000/v1", "llm_model": "m"},
     {"llm_base_url": "http://evil.example:8000/v1"}, "llm_model"),
    ({"sandbox": "process"}, {}, "sandbox"),
    ({"executor": "local", "workers": 2}, {}, "executor"),
    ({"executor": "ray", "ray_address": "10.0.0.9:6379"}, {"executor": "ray"}, "ray_address"),
    ({"gpus": "0"}, {}, "gpus"),
]


@pytest.mark.parametrize("stored, given, setting", GUARDED, ids=[g[2] for g in GUARDED])
def test_resume_takes_endpoint_sandbox_and_executor_only_when_confirmed(tmp_path, stored, given, setting):
    RunConfig(**stored).save(tmp_path)
    with pytest.raises(BadInputError, match=f"sets {setting} = .*pass --{setting.replace('_', '-')} "):
        resume_config(tmp_path, given)
    confirmed = resume_config(tmp_path, {**given, setting: stored[setting]})
    assert getattr(confirmed, setting) == stored[setting]


def test_resume_replaces_a_stored_endpoint_by_the_one_given_and_records_it(tmp_path):
    RunConfig(llm_base_url="http://evil.example:8000/v1").save(tmp_path)
    config = resume_config(tmp_path, {"llm_base_url": "http://127.0.0.1:8000/v1"})
    assert config.llm_base_url == "http://127.0.0.1:8000/v1" == load_config(tmp_path).llm_base_url


CORRUPT = [
    ({"budget": "5"}, "budget: Input should be a valid integer"),
    ({"budget": True}, "budget: Input should be a valid integer"),
    ({"budget": 0}, "budget: Input should be greater than or equal to 1"),
    ({"sparsity": 1.5}, "sparsity"),
    ({"sandbox": "none"}, "sandbox: Input should be 'docker' or 'process'"),
    ({"llm_base_url": "file:///etc/passwd"}, "http:// or https://"),
    ({"unknown_knob": 1}, "unknown_knob: Extra inputs are not permitted"),
    ({"prompts": "not-installed"}, "unknown prompt set 'not-installed'"),
    ([1, 2], "Input should be an object"),
]


@pytest.mark.parametrize("content, message", CORRUPT, ids=[str(c[0])[:30] for c in CORRUPT])
def test_resume_refuses_a_config_of_wrong_types_ranges_or_keys(tmp_path, content, message):
    (tmp_path / "config.json").write_text(json.dumps(content))
    with pytest.raises(BadInputError) as err:
        load_config(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_resume_refuses_config_that_is_not_json_or_huge(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(BadInputError, match="corrupt"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(BadInputError, match="larger than"):
        load_config(tmp_path)


def test_cli_resume_never_sends_the_api_key_to_a_stored_endpoint(tmp_path, attacker):
    url, seen = attacker
    RunConfig(llm_base_url=url, llm_model="gpt", sandbox="process").save(tmp_path)
    proc = cli("run", "--resume", str(tmp_path))
    assert_clean_refusal(proc, "llm_base_url", "--llm-base-url")
    assert seen == []                                        # nothing, let alone the key, reached it
    assert not (tmp_path / "trace.jsonl").exists()           # refused before the run touched the folder
