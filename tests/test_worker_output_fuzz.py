"""Property-based attack on the host side of the sandbox: whatever a worker prints, no exception escapes.

Generated worker outputs (the supervisor report line, result.json, profile.json,
masks.bin; structured-but-wrong JSON and random bytes) go through the path a
backend runs on a container's stdout (`read_supervisor_stream` then
`verdict_from_run`, with a real tiny ScoringBundle). Each must end as one of the
documented verdict statuses. Derandomized, so CI sees the same examples each run;
EXAMPLES below sum to more than 10,000.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoprune.pruning.masks import pack_mask, scores_to_mask
from autoprune.sandbox import protocol as P
from autoprune.sandbox.tiny import tiny_bundle
from autoprune.sandbox.verdict import STATUSES, ScoringRequest
from test_sandbox_host import host_verdict, report_for, worker_stream

EXAMPLES = {"report": 2500, "result": 2500, "profile": 1500, "masks": 1500, "bytes": 2500}


def fuzz_settings(name: str):
    return settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("fuzz-bundle"))


EDGE_INTS = st.sampled_from([-1, 0, 1, 7, 2 ** 31, 2 ** 53 + 1, 2 ** 63, -(2 ** 63), 10 ** 30, 10 ** 400])
EDGE_TEXT = st.sampled_from(["", "row", "layer", "ok", "crashed", "\x1b[2J", "\udcff", "a" * 5000,
                             "model.layers.0.self_attn.q_proj", "masks.bin", "result.json", "../x"])
SCALARS = (st.none() | st.booleans() | st.integers() | EDGE_INTS | EDGE_TEXT | st.text(max_size=8)
           | st.floats(allow_nan=True, allow_infinity=True))
KEYS = EDGE_TEXT | st.text(max_size=6)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                    max_leaves=6)


@st.composite
def mutated(draw, document):
    """`document` with a few changes at random places: a value replaced, a key dropped or added."""
    doc = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 2))):
        node = doc
        for _ in range(draw(st.integers(0, 3))):
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) \
                if isinstance(node, list) else []
            children = [(k, v) for k, v in children if isinstance(v, (dict, list))]
            if not children:
                break
            node = draw(st.sampled_from(children))[1]
        if isinstance(node, dict):
            action = draw(st.sampled_from(["replace", "drop", "add"]))
            keys = list(node)
            if action == "add" or not keys:
                node[draw(KEYS)] = draw(JSON)
            elif action == "drop":
                del node[draw(st.sampled_from(keys))]
            else:
                node[draw(st.sampled_from(keys))] = draw(JSON)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(JSON)
    return doc


@st.composite
def damaged_bytes(draw, data: bytes):
    """Byte-level damage: truncation, flipped bytes, inserted garbage, or pure noise."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "noise", "nest"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data)))]
    if kind == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(max_size=16)) + data[at:]
    if kind == "nest":
        depth = draw(st.integers(100, 5000))
        return b"[" * depth + data + b"]" * depth
    return draw(st.binary(max_size=256))


def serialized(strategy):
    """JSON text of a generated document (NaN/Infinity allowed, as a forging worker may write)."""
    return strategy.map(lambda doc: json.dumps(doc, allow_nan=True).encode())


def either_way(document):
    """Structured-but-wrong JSON, or damaged bytes of the honest document."""
    honest = json.dumps(document).encode()
    return serialized(mutated(document)) | damaged_bytes(honest) | st.just(honest)


@functools.lru_cache(maxsize=4)
def _honest_outputs(bundle, name) -> tuple:
    blob = pack_mask(scores_to_mask(torch.rand(bundle.layer(name).shape, generator=torch.Generator().manual_seed(0)),
                                    0.5))
    result = {"kind": "ok", "group": "row", "timings": {"load": 0.1, "score": 0.2},
              "layers": [{"name": name, "shape": list(bundle.layer(name).shape), "offset": 0, "nbytes": len(blob)}]}
    return ((P.MASKS_FILE, blob), (P.RESULT_FILE, json.dumps(result).encode()))


def honest_outputs(bundle, name) -> dict[str, bytes]:
    """masks.bin and result.json of an honest worker (computed once)."""
    return dict(_honest_outputs(bundle, name))


def assert_verdict(chunks, bundle, request, cap=1 << 20) -> None:
    verdict = host_verdict(chunks, bundle, request, cap=cap)
    assert verdict.status in STATUSES
    assert isinstance(verdict.message, str) and len(verdict.message) <= 5000
    assert all(isinstance(v, float) for v in verdict.timings.values())


def _request(bundle, mode="masks") -> ScoringRequest:
    return ScoringRequest(sparsity={bundle.names[0]: 0.5}, mode=mode)


@fuzz_settings("report")
@given(data=st.data())
def test_fuzzed_report_lines_never_raise(bundle, data):
    files = honest_outputs(bundle, bundle.names[0])
    line = data.draw(either_way(report_for(files)))
    assert_verdict(worker_stream(line.replace(b"\n", b" "), files), bundle, _request(bundle))


@fuzz_settings("result")
@given(data=st.data())
def test_fuzzed_results_never_raise(bundle, data):
    files = honest_outputs(bundle, bundle.names[0])
    honest = json.loads(files[P.RESULT_FILE])
    failure = {"kind": data.draw(st.sampled_from([P.KIND_CRASHED, P.KIND_INVALID, P.KIND_REJECTED])),
               "message": "MemoryError"}
    files[P.RESULT_FILE] = data.draw(either_way(honest) | either_way(failure))
    assert_verdict(worker_stream(report_for(files), files), bundle, _request(bundle))


@fuzz_settings("profile")
@given(data=st.data())
def test_fuzzed_profiles_never_raise(bundle, data):
    stats = {"mean": 0.5, "std": 0.1, "skewness": 2.0, "numel": 4096}
    profile = {"layers": {n: dict(stats) for n in bundle.names},
               "blocks": {str(s.layer_index): dict(stats) for s in bundle.layers}}
    files = {P.PROFILE_FILE: data.draw(either_way(profile)),
             P.RESULT_FILE: json.dumps({"kind": "ok", "group": "row", "layers": [], "timings": {}}).encode()}
    assert_verdict(worker_stream(report_for(files), files), bundle, _request(bundle, "profile"))


@fuzz_settings("masks")
@given(data=st.data())
def test_fuzzed_mask_bytes_and_tables_never_raise(bundle, data):
    name = bundle.names[0]
    files = honest_outputs(bundle, name)
    files[P.MASKS_FILE] = data.draw(damaged_bytes(files[P.MASKS_FILE]) | st.just(files[P.MASKS_FILE]))
    offset = data.draw(st.integers(0, 2 * len(files[P.MASKS_FILE])) | EDGE_INTS)
    nbytes = data.draw(st.integers(0, 2 * len(files[P.MASKS_FILE])) | EDGE_INTS)
    result = json.loads(files[P.RESULT_FILE])
    result["layers"][0].update(offset=offset, nbytes=nbytes)
    files[P.RESULT_FILE] = json.dumps(result).encode()
    listed = data.draw(st.booleans())            # or: the report lists sizes that do not match the bytes
    report = report_for(files)
    if not listed:
        report["files"] = [[n, data.draw(st.integers(0, 4096))] for n in files]
    assert_verdict(worker_stream(report, files), bundle, _request(bundle))


@fuzz_settings("bytes")
@given(stream=st.lists(st.binary(max_size=512), max_size=6), with_sentinel=st.booleans(),
       cap=st.integers(0, 1 << 20))
def test_random_streams_never_raise(bundle, stream, with_sentinel, cap):
    if with_sentinel:
        stream = [b"x", P.SENTINEL.encode(), *stream]
    assert_verdict(stream, bundle, _request(bundle), cap=cap)


def test_the_fuzz_throws_at_least_ten_thousand_outputs():
    assert sum(EXAMPLES.values()) >= 10_000
