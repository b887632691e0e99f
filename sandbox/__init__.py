"""The sandbox: run one untrusted candidate and return a verified CandidateVerdict (DESIGN §3).

    bundle = write_scoring_bundle(model, stats, run_dir / "bundle")       # once per run
    verdict = run_candidate(source, bundle, ScoringRequest(sparsity={name: 0.5 ...}))
    verdict.status in STATUSES; verdict.masks: {layer name: bool keep-mask}

Static gate (`check_source`), one locked-down Docker container per candidate
(`backend="docker"`, default) or a weaker subprocess (`backend="process"`, on
request only), and host-side verification of every mask. `SandboxSession` runs
many candidates on one bundle with each next container started ahead.
"""

# Exports resolve lazily: `autoprune-agent sandbox build` and the process
# supervisor must not pay for importing torch.
_EXPORTS = {
    "run_candidate": "api", "write_scoring_bundle": "bundle", "ScoringBundle": "bundle",
    "LayerSpec": "bundle", "ScoringRequest": "verdict", "SandboxLimits": "verdict",
    "CandidateVerdict": "verdict", "STATUSES": "verdict", "check_source": "gate",
    "GateResult": "gate", "SandboxSession": "session",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autoprune.sandbox' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"autoprune.sandbox.{_EXPORTS[name]}"), name)
