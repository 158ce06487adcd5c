"""Potentials: PyTrees of parameters with a jax-md energy function (:mod:`jaxiap.potentials.base`).

- :mod:`~jaxiap.potentials.base`: the :class:`Potential` protocol and its helpers
  (``energy_fn``, ``parameters``, ``with_parameters``, ``stack_parameters``,
  ``as_coefficient_energy``);
- :mod:`~jaxiap.potentials.linear`: linear-in-coefficients potentials on any descriptor, design matrices;
- :mod:`~jaxiap.potentials.pair`: pair potentials (``PairPotential``, the Lennard-Jones ``LJ``).
"""
