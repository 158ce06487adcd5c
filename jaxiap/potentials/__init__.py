"""Potentials: linear in coefficients, Gaussian processes, neural networks."""
