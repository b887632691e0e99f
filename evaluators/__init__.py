"""Trusted evaluators: verification and fitness. Never execute candidate source."""
