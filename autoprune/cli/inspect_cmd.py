"""Placeholder: replay / report / plugins commands, registered by their owner."""
