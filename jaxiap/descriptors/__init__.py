"""Descriptors: pure functions of positions to per-atom and per-structure features."""
