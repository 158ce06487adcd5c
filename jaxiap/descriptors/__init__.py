"""Descriptors: pure functions of positions to per-atom (N, F) and per-structure (F,) features.

- :mod:`~jaxiap.descriptors.base`: the :class:`Descriptor` protocol;
- :mod:`~jaxiap.descriptors.radial`: radial bases and the pair radial descriptor;
- :mod:`~jaxiap.descriptors.ace`: ACE many-body descriptors (body order 2 to 4), docs/ace.md;
- :mod:`~jaxiap.descriptors.ace_rows`: their linear-fit design rows by the chain rule.
"""
