"""`run_candidate`: one untrusted candidate in, one verified CandidateVerdict out.

    gate (host, ms) -> backend run (docker container | weaker process) -> verify every mask

The sandbox never judges fitness: a candidate can only choose a mask, and the
mask must pass `verify_mask` (shape, exact sparsity, N:M) before anyone sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal, Optional

from autoprune.errors import BadInputError
from autoprune.sandbox import protocol as P
from autoprune.sandbox.bundle import ScoringBundle
from autoprune.sandbox.codedir import staged_code_dir
from autoprune.sandbox.gate import check_source
from autoprune.sandbox.outcome import verdict_from_run
from autoprune.sandbox.verdict import CandidateVerdict, SandboxLimits, ScoringRequest

Backend = Literal["docker", "process"]


def write_inputs(folder: Path, source: str, request: ScoringRequest, atomic: bool = False) -> None:
    """candidate.py, then request.json (atomically when a warm worker is polling for it)."""
    os.chmod(folder, 0o755)   # the container's non-root user must read them
    (folder / P.CANDIDATE_FILE).write_text(source)
    os.chmod(folder / P.CANDIDATE_FILE, 0o644)
    target = folder / (P.REQUEST_FILE + ".tmp" if atomic else P.REQUEST_FILE)
    target.write_text(json.dumps(request.to_json()))
    os.chmod(target, 0o644)
    if atomic:
        os.replace(target, folder / P.REQUEST_FILE)


def check_request(bundle: ScoringBundle, request: ScoringRequest) -> None:
    if request.mode not in ("masks", "profile"):
        raise BadInputError(f"scoring mode {request.mode!r} is not 'masks' or 'profile'")
    if request.mode == "masks" and not request.sparsity:
        raise BadInputError("a 'masks' request needs a sparsity for at least one layer")
    for name, sparsity in request.sparsity.items():
        bundle.layer(name)
        if not 0.0 <= float(sparsity) < 1.0:
            raise BadInputError(f"sparsity {sparsity} for {name} is not in [0, 1)")


def _run_backend(backend: Backend, bundle: ScoringBundle, inputs: Path, limits: SandboxLimits,
                 cap: int):
    code = staged_code_dir()
    if backend == "docker":
        from autoprune.sandbox import docker_backend as D

        client = D.docker_client()
        config = D.container_config(limits.image or D.DEFAULT_IMAGE, limits, cap,
                                    bundle=bundle.folder.resolve(), inputs=inputs, code=code)
        return D.run_in_container(client, config, limits, cap)
    if backend == "process":
        from autoprune.sandbox.process_backend import run_in_process

        out = inputs / "out"
        out.mkdir(mode=0o700)
        return run_in_process(bundle.folder.resolve(), inputs, out, code, limits, cap)
    raise BadInputError(f"sandbox backend {backend!r} is not 'docker' or 'process'")


def run_candidate(source: str, bundle: ScoringBundle, request: ScoringRequest,
                  backend: Backend = "docker",
                  limits: Optional[SandboxLimits] = None) -> CandidateVerdict:
    """Gate, run and verify one candidate. Never raises for a bad candidate (only for a
    broken setup: no Docker engine, missing image, bad request -> AutopruneError)."""
    limits = limits or SandboxLimits()
    check_request(bundle, request)
    t0 = time.perf_counter()
    gate_group = None
    if not limits.raw:
        gate = check_source(source, offered=bundle.offered())
        if not gate.ok:
            return CandidateVerdict(status="rejected-static", message=gate.message, backend=backend,
                                    timings={"gate": time.perf_counter() - t0})
        gate_group = gate.group
    t_gate = time.perf_counter() - t0
    cap = limits.output_cap(bundle.packed_mask_bytes())
    inputs = Path(tempfile.mkdtemp(prefix="autoprune-candidate-"))
    try:
        write_inputs(inputs, source, request)
        run = _run_backend(backend, bundle, inputs, limits, cap)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)
    run.timings["gate"] = t_gate
    verdict = verdict_from_run(run, bundle, request, limits, cap, gate_group)
    verdict.backend = backend
    verdict.timings["total"] = time.perf_counter() - t0
    return verdict
