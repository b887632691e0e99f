"""`SandboxSession`: many candidates on one bundle, each in a fresh container started ahead.

Still one container per candidate, but the next one is created while the current
candidate's verdict is being used: its worker imports torch and then waits for
its inputs, so container start and interpreter start leave the critical path.
The inputs folder is mounted read-only in the container; the host writes the
candidate into it when it arrives (request.json last, atomically).

    with SandboxSession(bundle, limits) as session:
        verdict = session.run(source, request)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from autoprune.sandbox import docker_backend as D
from autoprune.sandbox.api import check_request, write_inputs
from autoprune.sandbox.bundle import ScoringBundle
from autoprune.sandbox.codedir import staged_code_dir
from autoprune.sandbox.gate import check_source
from autoprune.sandbox.outcome import verdict_from_run
from autoprune.sandbox.verdict import CandidateVerdict, SandboxLimits, ScoringRequest

# How long a warm container waits for a candidate before its worker gives up.
WARM_IDLE_S = 1800.0


class SandboxSession:
    def __init__(self, bundle: ScoringBundle, limits: Optional[SandboxLimits] = None):
        self.bundle = bundle
        self.limits = limits or SandboxLimits()
        self.cap = self.limits.output_cap(bundle.packed_mask_bytes())
        self.client = D.docker_client()
        D.require_image(self.client, self.limits.image or D.DEFAULT_IMAGE)
        self._code = staged_code_dir()
        self._next: Optional[tuple[D.StartedContainer, Path]] = None
        self._preparing: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._prepare_in_background()

    def _prepare(self) -> None:
        inputs = Path(tempfile.mkdtemp(prefix="autoprune-candidate-"))
        os.chmod(inputs, 0o755)
        config = D.container_config(self.limits.image or D.DEFAULT_IMAGE, self.limits, self.cap,
                                    bundle=self.bundle.folder.resolve(), inputs=inputs,
                                    code=self._code, wait_input_s=WARM_IDLE_S)
        try:
            self._next = (D.start_container(self.client, config, self.cap), inputs)
        except BaseException as exc:  # surfaced on the next run()
            shutil.rmtree(inputs, ignore_errors=True)
            self._error = exc

    def _prepare_in_background(self) -> None:
        self._preparing = threading.Thread(target=self._prepare, daemon=True)
        self._preparing.start()

    def _take(self) -> tuple[D.StartedContainer, Path]:
        self._preparing.join()
        if self._error is not None:
            error, self._error = self._error, None
            self._prepare_in_background()
            raise error
        taken, self._next = self._next, None
        return taken

    def run(self, source: str, request: ScoringRequest) -> CandidateVerdict:
        """Like `run_candidate(..., backend="docker")`, on a container started ahead."""
        check_request(self.bundle, request)
        t0 = time.perf_counter()
        gate_group = None
        if not self.limits.raw:
            gate = check_source(source, offered=self.bundle.offered())
            if not gate.ok:   # the warm container stays for the next candidate
                return CandidateVerdict(status="rejected-static", message=gate.message,
                                        timings={"gate": time.perf_counter() - t0})
            gate_group = gate.group
        t_gate = time.perf_counter() - t0
        started, inputs = self._take()
        try:
            write_inputs(inputs, source, request, atomic=True)
            run = D.finish_container(started, self.limits)
        finally:
            shutil.rmtree(inputs, ignore_errors=True)
            self._prepare_in_background()
        run.timings["gate"] = t_gate
        run.timings["container_start"] = 0.0   # off the critical path
        verdict = verdict_from_run(run, self.bundle, request, self.limits, self.cap, gate_group)
        verdict.timings["total"] = time.perf_counter() - t0
        return verdict

    def close(self) -> None:
        if self._preparing is not None:
            self._preparing.join()
        if self._next is not None:
            started, inputs = self._next
            D.remove_container(started.container)
            shutil.rmtree(inputs, ignore_errors=True)
            self._next = None

    def __enter__(self) -> "SandboxSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
