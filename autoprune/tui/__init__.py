"""The replay terminal UI (`autoprune-agent replay RUN_DIR`)."""

from autoprune.tui.app import ReplayApp

__all__ = ["ReplayApp"]
