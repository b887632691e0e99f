"""Host-side pieces without a container: GPU requests, container settings, transport, verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from docker.types import DeviceRequest

from autoprune.errors import BadInputError
from autoprune.pruning.masks import SparsityPattern, pack_mask, scores_to_mask
from autoprune.sandbox import protocol as P
from autoprune.sandbox.bundle import ScoringBundle
from autoprune.sandbox.docker_backend import container_config
from autoprune.sandbox.gpus import assign_gpus, device_requests
from autoprune.sandbox.outcome import verdict_from_run
from autoprune.sandbox.tiny import tiny_bundle
from autoprune.sandbox.transport import RawRun, read_supervisor_stream
from autoprune.sandbox.verdict import SandboxLimits, ScoringRequest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> ScoringBundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


def test_gpu_requests():
    assert device_requests(None) == [] and device_requests("none") == []
    (everything,) = device_requests("all")
    assert isinstance(everything, DeviceRequest)
    assert everything["Count"] == -1 and everything["Capabilities"] == [["gpu"]]
    (two,) = device_requests("0,1")
    assert two["DeviceIDs"] == ["0", "1"] and two["Capabilities"] == [["gpu"]]
    with pytest.raises(BadInputError):
        device_requests("gpu0")


def test_one_gpu_per_worker_slot():
    assert assign_gpus("0,1", 4) == ["0", "1", "0", "1"]
    assert assign_gpus(None, 2) == [None, None]
    assert assign_gpus("all", 1) == ["all"]
    with pytest.raises(BadInputError):
        assign_gpus("all", 2)
    (request,) = device_requests(assign_gpus("0,1", 2)[1])
    assert request["DeviceIDs"] == ["1"]


def test_container_is_locked_down(tmp_path):
    limits = SandboxLimits(memory_bytes=1 << 30, cpus=0.5, pids=32, gpus="1")
    config = container_config("img", limits, 4096, bundle=tmp_path, inputs=tmp_path, code=tmp_path)
    assert config["network_mode"] == "none" and config["read_only"] is True
    assert config["user"] == "65534:65534" and config["cap_drop"] == ["ALL"]
    assert config["security_opt"] == ["no-new-privileges:true"] and config["init"] is True
    assert config["mem_limit"] == config["memswap_limit"] == 1 << 30
    assert config["nano_cpus"] == 500_000_000 and config["pids_limit"] == 32
    assert set(config["tmpfs"]) == {"/tmp", P.OUTPUT_DIR}
    assert "size=4096" in config["tmpfs"][P.OUTPUT_DIR]
    assert all(m["ReadOnly"] for m in config["mounts"])
    assert {m["Target"] for m in config["mounts"]} == {P.BUNDLE_DIR, P.INPUT_DIR, P.CODE_DIR}
    assert config["log_config"]["Config"]["max-size"] == "1m"
    assert not any(k.upper().endswith(("KEY", "TOKEN")) for k in config["environment"])
    assert config["device_requests"][0]["DeviceIDs"] == ["1"]


def _stream(report: dict, payload: bytes, noise: bytes = b"noise\n") -> list[bytes]:
    data = noise + (P.SENTINEL + json.dumps(report) + "\n").encode() + payload
    return [data[i: i + 7] for i in range(0, len(data), 7)]   # arbitrary chunk boundaries


def test_transport_splits_files_and_caps():
    report = {"returncode": 0, "files": [["a", 3], ["b", 2]]}
    run = RawRun()
    read_supervisor_stream(_stream(report, b"xyzuv"), cap=100, run=run)
    assert run.files == {"a": b"xyz", "b": b"uv"} and run.noise.strip() == "noise"
    capped = RawRun()
    read_supervisor_stream(_stream({"files": [["a", 10 ** 9]]}, b""), cap=100, run=capped)
    assert capped.output_overflow and capped.files == {}
    silent = RawRun()
    read_supervisor_stream([b"x" * 10 ** 6], cap=100, run=silent)
    assert silent.report is None and len(silent.noise) <= 4096


def _run_with(masks: dict[str, torch.Tensor], group="row") -> RawRun:
    layers, blob = [], b""
    for name, mask in masks.items():
        data = pack_mask(mask)
        layers.append({"name": name, "shape": list(mask.shape), "offset": len(blob),
                       "nbytes": len(data)})
        blob += data
    result = {"kind": "ok", "layers": layers, "group": group, "timings": {}}
    return RawRun(report={"returncode": 0}, files={P.RESULT_FILE: json.dumps(result).encode(),
                                                   P.MASKS_FILE: blob})


def _verdict(run, bundle, request):
    return verdict_from_run(run, bundle, request, SandboxLimits(), 10 ** 6, gate_group="row")


def test_host_verifies_every_mask(bundle):
    name = bundle.names[0]
    shape = bundle.layer(name).shape
    request = ScoringRequest(sparsity={name: 0.5})
    good = scores_to_mask(torch.rand(shape), 0.5)
    assert _verdict(_run_with({name: good}), bundle, request).status == "ok"
    all_keep = torch.ones(shape, dtype=torch.bool)
    bad = _verdict(_run_with({name: all_keep}), bundle, request)
    assert bad.status == "invalid-output" and "expected exactly" in bad.message
    wrong_shape = _verdict(_run_with({name: good[:, :8]}), bundle, request)
    assert wrong_shape.status == "invalid-output"
    missing = _verdict(_run_with({}), bundle, request)
    assert missing.status == "invalid-output" and "no mask" in missing.message
    nm = ScoringRequest(sparsity={name: 0.5}, pattern=SparsityPattern(2, 4))
    assert _verdict(_run_with({name: good}), bundle, nm).status == "invalid-output"


@pytest.mark.parametrize("run, status", [
    (RawRun(timed_out=True), "timeout"),
    (RawRun(killed_oom=True), "out-of-memory"),
    (RawRun(report={"returncode": -9, "oom_kills": 1}), "out-of-memory"),
    (RawRun(report={"returncode": 0, "stdout_overflow": True}), "too-much-output"),
    (RawRun(output_overflow=True), "too-much-output"),
    (RawRun(report={"returncode": 1, "tail": "Traceback\nKeyError: 'x'"}), "crashed"),
])
def test_resource_verdicts(bundle, run, status):
    request = ScoringRequest(sparsity={bundle.names[0]: 0.5})
    verdict = _verdict(run, bundle, request)
    assert verdict.status == status
    if status == "crashed":
        assert "KeyError" in verdict.message


def test_bundle_round_trip(bundle):
    reopened = ScoringBundle.open(bundle.folder)
    assert reopened.layers == bundle.layers
    spec = reopened.layers[0]
    assert spec.short_name == "q_proj" and spec.num_layers == 2 and spec.group == "self_attn"
    assert oct(Path(bundle.folder).stat().st_mode)[-3:] == "755"


def test_staged_worker_code_is_read_once_per_process(tmp_path, monkeypatch):
    """Editing the source tree during a run must not give the container code the host does not run."""
    from autoprune.sandbox import codedir

    module = tmp_path / "masks.py"
    module.write_text("VERSION = 1\n")
    monkeypatch.setattr(codedir, "TRUSTED_FILES", {**codedir.TRUSTED_FILES, "autoprune/pruning/masks.py": module})
    codedir.trusted_sources.cache_clear()
    try:
        staged = codedir.staged_code_dir(tmp_path / "cache")
        module.write_text("VERSION = 2\n")                      # edited mid-run
        assert codedir.staged_code_dir(tmp_path / "cache") == staged
        assert (staged / "autoprune/pruning/masks.py").read_text() == "VERSION = 1\n"
    finally:
        codedir.trusted_sources.cache_clear()
