"""Pruning core: calibration statistics, metrics, masks, allocators, reconstruction, export.

Never calls an LLM, never runs untrusted code (DESIGN §1).
"""
