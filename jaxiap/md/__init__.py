"""Molecular dynamics on jax-md: ensembles, quenches, QoIs, sensitivities."""
