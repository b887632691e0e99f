"""From what a backend observed to a CandidateVerdict, verifying every mask on the host.

Order matters: resource verdicts (timeout, out-of-memory, too-much-output) win
over whatever the worker claims, and "ok" requires every requested mask to pass
`verify_mask` with the shapes of the trusted bundle, not the worker's.
"""

from __future__ import annotations

import json
import math
import time
from typing import Optional

from autoprune.errors import MaskError
from autoprune.pruning.masks import unpack_mask, verify_mask
from autoprune.sandbox import protocol as P
from autoprune.sandbox.bundle import ScoringBundle
from autoprune.sandbox.transport import RawRun
from autoprune.sandbox.verdict import CandidateVerdict, SandboxLimits, ScoringRequest

_KILLED = (-9, 137)


def _crash_message(run: RawRun) -> str:
    report = run.report or {}
    tail = (report.get("tail") or run.noise or "").strip()
    code = report.get("returncode", run.exit_code)
    lines = "\n".join(tail.splitlines()[-15:])
    return f"the worker exited with code {code}" + (f"; last lines:\n{lines}" if lines else "")


def _is_memory_error(text: str) -> bool:
    """An allocation refused by a limit (RLIMIT_AS, cgroup) surfaces as one of these."""
    return "MemoryError" in text or "can't allocate memory" in text


def _resource_verdict(run: RawRun, limits: SandboxLimits, cap: int) -> Optional[tuple[str, str]]:
    report = run.report or {}
    if run.timed_out:
        return "timeout", (f"the candidate ran past the {limits.timeout_s:g} s wall-clock limit and "
                           "was killed; use vectorised torch operations, no Python loops over weights")
    oom_signal = report.get("returncode") in _KILLED and report.get("oom_kills", 0) > 0
    if run.killed_oom or oom_signal:
        return "out-of-memory", (f"the candidate exceeded the {limits.memory_bytes >> 20} MiB memory "
                                 "limit and was killed; avoid (in×in) or larger temporaries")
    if run.output_overflow:
        return "too-much-output", f"the candidate's output exceeds the {cap} byte cap"
    if report.get("stdout_overflow"):
        return "too-much-output", (f"the candidate printed more than {limits.stdout_bytes} bytes "
                                   "and was stopped; do not print")
    return None


def _read_result(run: RawRun) -> Optional[dict]:
    try:
        result = json.loads(run.files[P.RESULT_FILE])
        return result if isinstance(result, dict) else None
    except (KeyError, ValueError):
        return None


def _verified_masks(run: RawRun, result: dict, bundle: ScoringBundle, request: ScoringRequest,
                    group: str) -> dict:
    entries = {e.get("name"): e for e in result.get("layers", []) if isinstance(e, dict)}
    data = run.files.get(P.MASKS_FILE, b"")
    masks = {}
    for name, sparsity in request.sparsity.items():
        spec = bundle.layer(name)
        entry = entries.get(name)
        if entry is None:
            raise MaskError(f"{name}: no mask in the output")
        start, size = int(entry["offset"]), int(entry["nbytes"])
        if start < 0 or start + size > len(data):
            raise MaskError(f"{name}: mask bytes out of range")
        mask = unpack_mask(data[start: start + size], spec.shape)
        verify_mask(mask, spec.shape, float(sparsity), group=group, pattern=request.pattern,
                    name=name)
        masks[name] = mask
    return masks


def _finite_stats(stats) -> bool:
    return isinstance(stats, dict) and all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in stats.values())


def _verified_profile(run: RawRun, bundle: ScoringBundle) -> dict:
    """{"layers": {name: stats}, "blocks": {index: stats}}, every value a finite number."""
    try:
        profile = json.loads(run.files[P.PROFILE_FILE])
        layers, blocks = profile["layers"], profile["blocks"]
    except (KeyError, ValueError, TypeError) as exc:
        raise MaskError(f"no readable profile in the output ({exc})") from exc
    for name in bundle.names:
        if not _finite_stats(layers.get(name)):
            raise MaskError(f"{name}: missing or non-finite score profile")
    indices = sorted({str(spec.layer_index) for spec in bundle.layers}, key=int)
    for index in indices:
        if not _finite_stats(blocks.get(index)):
            raise MaskError(f"block {index}: missing or non-finite score profile")
    return {"layers": {n: layers[n] for n in bundle.names}, "blocks": {i: blocks[i] for i in indices}}


def verdict_from_run(run: RawRun, bundle: ScoringBundle, request: ScoringRequest,
                     limits: SandboxLimits, cap: int, gate_group: Optional[str]) -> CandidateVerdict:
    timings = dict(run.timings)
    resource = _resource_verdict(run, limits, cap)
    if resource:
        return CandidateVerdict(status=resource[0], message=resource[1], timings=timings)
    result = _read_result(run)
    if result is None:
        message = _crash_message(run)
        status = "out-of-memory" if _is_memory_error(message) else "crashed"
        return CandidateVerdict(status=status, message=message, timings=timings)
    kind = result.get("kind")
    if kind == P.KIND_CRASHED and _is_memory_error(str(result.get("message", ""))):
        return CandidateVerdict(status="out-of-memory", timings=timings,
                                message=f"the candidate ran out of memory (limit "
                                        f"{limits.memory_bytes >> 20} MiB): {result['message'][-600:]}")
    if kind != "ok":
        status = kind if kind in (P.KIND_REJECTED, P.KIND_INVALID, P.KIND_TOO_MUCH) else "crashed"
        return CandidateVerdict(status=status, message=str(result.get("message", ""))[-4000:],
                                timings=timings)
    group = result.get("group") if gate_group is None else gate_group
    if group not in ("row", "layer") or result.get("group") != group:
        return CandidateVerdict(status="invalid-output", timings=timings,
                                message=f"the output's GROUP {result.get('group')!r} is not {group!r}")
    for key, value in (result.get("timings") or {}).items():
        if isinstance(value, (int, float)):
            timings[f"worker_{key}"] = float(value)
    t0 = time.perf_counter()
    try:
        if request.mode == "profile":
            verdict = CandidateVerdict(status="ok", profile=_verified_profile(run, bundle))
        else:
            verdict = CandidateVerdict(status="ok", masks=_verified_masks(run, result, bundle,
                                                                          request, group))
    except (MaskError, KeyError, TypeError, ValueError) as exc:
        return CandidateVerdict(status="invalid-output", message=str(exc), timings=timings)
    timings["verification"] = time.perf_counter() - t0
    verdict.timings, verdict.group = timings, group
    return verdict
