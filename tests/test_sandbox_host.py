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
from autoprune.sandbox.worker_output import SupervisorReport


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
    return RawRun(report=SupervisorReport(returncode=0), files={P.RESULT_FILE: json.dumps(result).encode(),
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
    (RawRun(report=SupervisorReport(returncode=-9, oom_kills=1)), "out-of-memory"),
    (RawRun(report=SupervisorReport(returncode=0, stdout_overflow=True)), "too-much-output"),
    (RawRun(output_overflow=True), "too-much-output"),
    (RawRun(report=SupervisorReport(returncode=1, tail="Traceback\nKeyError: 'x'")), "crashed"),
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


# --- A hostile worker: every byte it sends is parsed; every failure is a verdict (issue 19) ---

def worker_stream(report: bytes | dict, files: dict[str, bytes] | None = None) -> list[bytes]:
    """What a (possibly forged) supervisor prints: noise, the report line, then the files' bytes."""
    files = files or {}
    line = report if isinstance(report, bytes) else json.dumps(report).encode()
    data = b"noise\n" + P.SENTINEL.encode() + line + b"\n" + b"".join(files.values())
    return [data[i: i + 4096] for i in range(0, len(data), 4096)]


def host_verdict(chunks, bundle, request, cap=10 ** 6):
    """The whole host-side path a backend runs on a container's stdout."""
    run = RawRun(exit_code=0)
    read_supervisor_stream(chunks, cap=cap, run=run)
    return verdict_from_run(run, bundle, request, SandboxLimits(), cap, gate_group="row")


def honest_files(bundle, name, result_changes=None, masks=None) -> dict[str, bytes]:
    mask = scores_to_mask(torch.rand(bundle.layer(name).shape), 0.5) if masks is None else masks
    blob = pack_mask(mask) if isinstance(mask, torch.Tensor) else mask
    result = {"kind": "ok", "group": "row", "timings": {"load": 0.1},
              "layers": [{"name": name, "shape": list(bundle.layer(name).shape), "offset": 0,
                          "nbytes": len(blob)}], **(result_changes or {})}
    return {P.MASKS_FILE: blob, P.RESULT_FILE: json.dumps(result).encode()}


def report_for(files: dict[str, bytes], **changes) -> dict:
    return {"returncode": 0, "stdout_bytes": 0, "stdout_overflow": False, "tail": "", "oom_kills": 0,
            "worker_seconds": 1.0, "files": [[n, len(d)] for n, d in files.items()], **changes}


def test_an_honest_stream_gives_ok(bundle):
    name = bundle.names[0]
    files = honest_files(bundle, name)
    verdict = host_verdict(worker_stream(report_for(files), files), bundle, ScoringRequest(sparsity={name: 0.5}))
    assert verdict.status == "ok" and verdict.masks[name].shape == bundle.layer(name).shape
    assert verdict.timings["worker_load"] == 0.1


DEEP = b"[" * 100_000 + b"]" * 100_000
BAD_REPORT_LINES = {
    "a list, not an object": b"[1, 2]",
    "Infinity size": b'{"files": [["masks.bin", Infinity]]}',
    "NaN size": b'{"files": [["masks.bin", NaN]]}',
    "huge int size": b'{"files": [["masks.bin", ' + b"9" * 400 + b"]]}",
    "float size": b'{"files": [["masks.bin", 3.0]]}',
    "negative size": b'{"files": [["masks.bin", -5]]}',
    "non-string name": b'{"files": [[7, 3]]}',
    "duplicate files": b'{"files": [["masks.bin", 1], ["masks.bin", 1]]}',
    "non-string tail": b'{"returncode": 1, "tail": 5}',
    "dict returncode": b'{"returncode": {"a": 1}}',
    "Infinity returncode": b'{"returncode": Infinity}',
    "int as bool": b'{"stdout_overflow": 1}',
    "unknown field": b'{"returncode": 0, "surprise": 1}',
    "invalid UTF-8": b'{"tail": "\xff\xfe"}',
    "deep nesting": DEEP,
    "not JSON": b"\x00\x01garbage",
    "escape sequences in keys": b'{"\\u001b[2J": 1}',
}


@pytest.mark.parametrize("line", list(BAD_REPORT_LINES.values()), ids=list(BAD_REPORT_LINES))
def test_a_forged_report_line_is_an_invalid_output_verdict(bundle, line):
    name = bundle.names[0]
    verdict = host_verdict(worker_stream(line, honest_files(bundle, name)), bundle,
                           ScoringRequest(sparsity={name: 0.5}))
    assert verdict.status == "invalid-output" and verdict.message.startswith("the supervisor report")
    assert len(verdict.message) < 400 and "\x1b" not in verdict.message and "\xff" not in verdict.message


def test_report_limits_are_verdicts(bundle):
    name = bundle.names[0]
    request = ScoringRequest(sparsity={name: 0.5})
    past_cap = host_verdict(worker_stream({"files": [["a", 600], ["b", 600]]}), bundle, request, cap=1000)
    assert past_cap.status == "too-much-output"
    huge_tail = host_verdict(worker_stream({"tail": "x" * (1 << 20)}), bundle, request)
    assert huge_tail.status == "invalid-output" and "exceeds" in huge_tail.message
    no_report = host_verdict([b"x" * 10 ** 5], bundle, request)
    assert no_report.status == "crashed"


def _ok_result(bundle, name, **changes) -> dict:
    return json.loads(honest_files(bundle, name, changes)[P.RESULT_FILE])


def _layer(bundle, layer, **changes) -> dict:
    return {**_ok_result(bundle, layer)["layers"][0], **changes}


BAD_RESULTS = {
    "a list": lambda b, n: [1],
    "unknown kind": lambda b, n: {"kind": "great", "message": ""},
    "message not a string": lambda b, n: {"kind": "crashed", "message": ["MemoryError"]},
    "group not a string": lambda b, n: _ok_result(b, n, group=["row"]),
    "timings are dicts": lambda b, n: _ok_result(b, n, timings={"load": {}}),
    "Infinity timing": lambda b, n: _ok_result(b, n, timings={"load": float("inf")}),
    "layers not a list": lambda b, n: _ok_result(b, n, layers={"a": 1}),
    "layer offset a string": lambda b, n: _ok_result(b, n, layers=[_layer(b, n, offset="0")]),
    "layer nbytes null": lambda b, n: _ok_result(b, n, layers=[_layer(b, n, nbytes=None)]),
    "layer name an int": lambda b, n: _ok_result(b, n, layers=[_layer(b, n, name=5)]),
    "layer shape strings": lambda b, n: _ok_result(b, n, layers=[_layer(b, n, shape=["a", "b"])]),
    "huge offset": lambda b, n: _ok_result(b, n, layers=[_layer(b, n, offset=10 ** 400)]),
    "negative offset": lambda b, n: _ok_result(b, n, layers=[_layer(b, n, offset=-1)]),
    "offset out of range": lambda b, n: _ok_result(b, n, layers=[_layer(b, n, offset=10 ** 6)]),
    "duplicate layers": lambda b, n: _ok_result(b, n, layers=[_layer(b, n), _layer(b, n)]),
    "masks missing": lambda b, n: _ok_result(b, n, layers=[]),
    "group mismatch": lambda b, n: _ok_result(b, n, group="layer"),
}


@pytest.mark.parametrize("make", list(BAD_RESULTS.values()), ids=list(BAD_RESULTS))
def test_a_forged_result_is_an_invalid_output_verdict(bundle, make):
    name = bundle.names[0]
    files = honest_files(bundle, name)
    files[P.RESULT_FILE] = json.dumps(make(bundle, name)).encode()
    verdict = host_verdict(worker_stream(report_for(files), files), bundle, ScoringRequest(sparsity={name: 0.5}))
    assert verdict.status == "invalid-output" and verdict.masks is None
    assert len(verdict.message) < 400


@pytest.mark.parametrize("data", [DEEP, b'{"kind": "ok"\xff}', b"", b"\x00" * 100], ids=["deep", "utf8", "empty", "nul"])
def test_unparseable_result_bytes_are_verdicts(bundle, data):
    name = bundle.names[0]
    files = {**honest_files(bundle, name), P.RESULT_FILE: data}
    verdict = host_verdict(worker_stream(report_for(files), files), bundle, ScoringRequest(sparsity={name: 0.5}))
    assert verdict.status == "invalid-output" and verdict.message.startswith(P.RESULT_FILE)


def test_a_huge_worker_message_is_cut_to_its_tail(bundle):
    name = bundle.names[0]
    message = "x" * (4 << 20) + " the end"
    files = {P.RESULT_FILE: json.dumps({"kind": "crashed", "message": message}).encode()}
    verdict = host_verdict(worker_stream(report_for(files), files), bundle, ScoringRequest(sparsity={name: 0.5}),
                           cap=8 << 20)
    assert verdict.status == "crashed" and len(verdict.message) <= 4000 and verdict.message.endswith("the end")


def test_trusted_shapes_come_from_the_bundle(bundle):
    """A worker that claims another shape, and packs a mask of that shape, is refused."""
    name = bundle.names[0]
    rows, cols = bundle.layer(name).shape
    small = scores_to_mask(torch.rand(rows, cols // 2), 0.5)
    files = honest_files(bundle, name, {"layers": [{"name": name, "shape": [rows, cols // 2], "offset": 0,
                                                    "nbytes": len(pack_mask(small))}]}, masks=small)
    verdict = host_verdict(worker_stream(report_for(files), files), bundle, ScoringRequest(sparsity={name: 0.5}))
    assert verdict.status == "invalid-output" and "expected" in verdict.message


def _profile_verdict(bundle, data: bytes):
    files = {P.PROFILE_FILE: data, P.RESULT_FILE: json.dumps({"kind": "ok", "group": "row", "layers": [],
                                                               "timings": {}}).encode()}
    request = ScoringRequest(sparsity={n: 0.5 for n in bundle.names}, mode="profile")
    return host_verdict(worker_stream(report_for(files), files), bundle, request)


def test_profile_output_is_validated(bundle):
    stats = {"mean": 1.0, "std": 0.5, "numel": 10}
    blocks = {str(i): stats for i in sorted({s.layer_index for s in bundle.layers})}
    good = {"layers": {n: stats for n in bundle.names}, "blocks": blocks}
    verdict = _profile_verdict(bundle, json.dumps(good).encode())
    assert verdict.status == "ok" and set(verdict.profile["layers"]) == set(bundle.names)
    bad = [
        json.dumps({**good, "layers": {**good["layers"], bundle.names[0]: {"mean": float("nan")}}}).encode(),
        json.dumps({**good, "layers": {n: [1.0] for n in bundle.names}}).encode(),
        json.dumps({**good, "blocks": {}}).encode(),
        json.dumps({**good, "layers": {n: {"mean": "1"} for n in bundle.names}}).encode(),
        json.dumps([good]).encode(),
        DEEP,
    ]
    for data in bad:
        verdict = _profile_verdict(bundle, data)
        assert verdict.status == "invalid-output", data[:80]


def test_a_host_error_for_one_candidate_becomes_its_recorded_verdict(tmp_path, tiny_llama):
    """An exception out of the sandbox path is that candidate's "crashed" verdict, recorded in the
    trace and the state, and the next candidate runs; a broken setup still stops the run."""
    from agent_support import ScriptedLLM, tiny_services
    from autoprune.agent.archive import write_seeds
    from autoprune.agent.nodes.verify import verify
    from autoprune.agent.services import CandidateRunner
    from autoprune.agent.state import initial_state
    from autoprune.runlog.trace_file import read_trace
    from autoprune.errors import SandboxError
    from autoprune.sandbox.api import run_candidate

    calls = []

    def breaks_once(source, bundle, request, **kwargs):
        calls.append(source)
        if len(calls) == 1:
            raise TypeError("a host bug")
        if len(calls) == 3:
            raise SandboxError("no Docker engine")
        return run_candidate(source, bundle, request, **kwargs)

    services = tiny_services(tiny_llama, tmp_path, ScriptedLLM({}))
    real = services.sandbox
    services.sandbox = CandidateRunner(real.bundle, real.pattern, real.sparsity, "process", run=breaks_once)
    seed_ids, records = write_seeds(tmp_path)
    state = initial_state("t", seed_ids, records)
    update = verify(state, services)
    failed = update["candidates"][seed_ids[0]]
    assert failed["status"] == "crashed" and "TypeError: a host bug" in failed["message"]
    assert update["queue"] == seed_ids[1:]
    (event,) = [e for e in read_trace(tmp_path).events if e["type"] == "verdict"]
    assert event["id"] == seed_ids[0] and event["status"] == "crashed"
    state = {**state, **update}
    assert verify(state, services)["candidates"][seed_ids[1]]["status"] == "ok"
    with pytest.raises(SandboxError):
        verify({**state, "queue": seed_ids[2:]}, services)
