"""From what a backend observed to a CandidateVerdict, verifying every mask on the host.

Order matters: resource verdicts (timeout, out-of-memory, too-much-output) win
over whatever the worker claims, and "ok" requires every requested mask to pass
`verify_mask` with the shapes of the trusted bundle, not the worker's. Every
byte from the worker is parsed by `sandbox.worker_output`; what does not parse
is an "invalid-output" verdict, never a host exception.
"""

from __future__ import annotations

import time
from typing import Mapping, Optional

import torch

from autoprune.errors import MaskError
from autoprune.pruning.masks import unpack_mask, verify_mask
from autoprune.sandbox import protocol as P
from autoprune.sandbox.bundle import ScoringBundle
from autoprune.sandbox.transport import RawRun
from autoprune.sandbox.verdict import CandidateVerdict, SandboxLimits, ScoringRequest
from autoprune.sandbox.worker_output import (FailedResult, OkResult, WorkerOutputError, parse_profile,
                                             parse_result)

_KILLED = (-9, 137)


def _crash_message(run: RawRun) -> str:
    report = run.report
    tail = ((report.tail if report else "") or run.noise or "").strip()
    code = report.returncode if report and report.returncode is not None else run.exit_code
    lines = "\n".join(tail.splitlines()[-15:])
    return f"the worker exited with code {code}" + (f"; last lines:\n{lines}" if lines else "")


def _is_memory_error(text: str) -> bool:
    """An allocation refused by a limit (RLIMIT_AS, cgroup) surfaces as one of these."""
    return "MemoryError" in text or "can't allocate memory" in text


def _resource_verdict(run: RawRun, limits: SandboxLimits, cap: int) -> Optional[tuple[str, str]]:
    report = run.report
    if run.timed_out:
        return "timeout", (f"the candidate ran past the {limits.timeout_s:g} s wall-clock limit and "
                           "was killed; vectorise the work (torch operations over whole rows, columns or blocks; a loop "
                           "may step over columns or iterations, never over single weights)")
    oom_signal = report is not None and report.returncode in _KILLED and report.oom_kills > 0
    if run.killed_oom or oom_signal:
        return "out-of-memory", (f"the candidate exceeded the {limits.memory_bytes >> 20} MiB memory "
                                 "limit and was killed; avoid temporaries much larger than the layer's weight and XᵀX")
    if run.output_overflow:
        return "too-much-output", f"the candidate's output exceeds the {cap} byte cap"
    if report is not None and report.stdout_overflow:
        return "too-much-output", (f"the candidate printed more than {limits.stdout_bytes} bytes "
                                   "and was stopped; do not print")
    return None


def verify_masks(masks: Mapping[str, torch.Tensor], bundle: ScoringBundle, request: ScoringRequest,
                 group: str) -> dict[str, torch.Tensor]:
    """The requested layers' masks, each checked with `verify_mask` against the trusted bundle's
    shape and the request's exact sparsity and pattern (raises MaskError). Every backend and every
    executor's worker output goes through here."""
    verified = {}
    for name, sparsity in request.sparsity.items():
        if name not in masks:
            raise MaskError(f"{name}: no mask in the output")
        verify_mask(masks[name], bundle.layer(name).shape, float(sparsity), group=group,
                    pattern=request.pattern, name=name)
        verified[name] = masks[name]
    return verified


def _verified_masks(run: RawRun, result: OkResult, bundle: ScoringBundle, request: ScoringRequest,
                    group: str) -> dict[str, torch.Tensor]:
    data = run.files.get(P.MASKS_FILE, b"")
    unpacked = {name: unpack_mask(result.layer_bytes(name, data), bundle.layer(name).shape)
                for name in request.sparsity}
    return verify_masks(unpacked, bundle, request, group)


def _verified_profile(run: RawRun, bundle: ScoringBundle) -> dict:
    """{"layers": {name: stats}, "blocks": {index: stats}} for exactly the bundle's layers and blocks."""
    if P.PROFILE_FILE not in run.files:
        raise WorkerOutputError("no profile in the output")
    profile = parse_profile(run.files[P.PROFILE_FILE])
    indices = sorted({str(spec.layer_index) for spec in bundle.layers}, key=int)
    for name in bundle.names:
        if name not in profile.layers:
            raise WorkerOutputError(f"{name}: missing score profile")
    for index in indices:
        if index not in profile.blocks:
            raise WorkerOutputError(f"block {index}: missing score profile")
    return {"layers": {n: profile.layers[n] for n in bundle.names},
            "blocks": {i: profile.blocks[i] for i in indices}}


def _failed_verdict(result: FailedResult, limits: SandboxLimits, timings: dict) -> CandidateVerdict:
    if result.kind == P.KIND_CRASHED and _is_memory_error(result.message):
        return CandidateVerdict(status="out-of-memory", timings=timings,
                                message=f"the candidate ran out of memory (limit "
                                        f"{limits.memory_bytes >> 20} MiB): {result.message[-600:]}")
    return CandidateVerdict(status=result.kind, message=result.message, timings=timings)


def verdict_from_run(run: RawRun, bundle: ScoringBundle, request: ScoringRequest,
                     limits: SandboxLimits, cap: int, gate_group: Optional[str]) -> CandidateVerdict:
    timings = dict(run.timings)
    resource = _resource_verdict(run, limits, cap)
    if resource:
        return CandidateVerdict(status=resource[0], message=resource[1], timings=timings)
    if run.report_error:
        return CandidateVerdict(status="invalid-output", message=run.report_error, timings=timings)
    if P.RESULT_FILE not in run.files:
        message = _crash_message(run)
        status = "out-of-memory" if _is_memory_error(message) else "crashed"
        return CandidateVerdict(status=status, message=message, timings=timings)
    try:
        result = parse_result(run.files[P.RESULT_FILE])
    except WorkerOutputError as exc:
        return CandidateVerdict(status="invalid-output", message=str(exc), timings=timings)
    if isinstance(result, FailedResult):
        return _failed_verdict(result, limits, timings)
    group = result.group if gate_group is None else gate_group
    if result.group != group:
        return CandidateVerdict(status="invalid-output", timings=timings,
                                message=f"the output's GROUP {result.group!r} is not {group!r}")
    timings.update({f"worker_{key}": value for key, value in result.timings.items()})
    t0 = time.perf_counter()
    try:
        if request.mode == "profile":
            verdict = CandidateVerdict(status="ok", profile=_verified_profile(run, bundle))
        else:
            verdict = CandidateVerdict(status="ok", masks=_verified_masks(run, result, bundle, request, group))
    except (MaskError, WorkerOutputError) as exc:
        return CandidateVerdict(status="invalid-output", message=str(exc), timings=timings)
    timings["verification"] = time.perf_counter() - t0
    verdict.timings, verdict.group = timings, group
    return verdict
