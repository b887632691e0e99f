"""The project's one exception family.

Anything raised as `AutopruneError` (or a subclass) is a problem the user can act
on: the CLI prints its message as one line and exits with code 2. Any other
exception is a bug and keeps its traceback.
"""


class AutopruneError(Exception):
    """Base class: a clear, user-actionable problem (bad input, missing resource)."""

    exit_code = 2


class BadInputError(AutopruneError):
    """An argument, config value or file the user gave is invalid."""


class ModelLoadError(AutopruneError):
    """A model could not be found or loaded."""


class DataError(AutopruneError):
    """A dataset or data folder is missing or unusable."""


class MaskError(AutopruneError):
    """A mask failed verification (shape, sparsity, N:M pattern, dtype)."""


class SandboxError(AutopruneError):
    """The sandbox could not run (no Docker engine, missing image, bad backend)."""


class TraceError(AutopruneError):
    """A run folder or trace is missing or corrupt beyond recovery."""


class LLMError(AutopruneError):
    """The LLM endpoint failed or kept returning unusable answers."""
