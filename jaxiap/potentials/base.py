"""The potential protocol: a PyTree of parameters with an energy function in the jax-md convention.

A :class:`Potential` is an equinox Module. Its parameters are array leaves
(by default every inexact-array leaf; a subclass narrows that with
:meth:`Potential.parameter_spec`, e.g. a linear potential's coefficients but
not its basis hyperparameters), everything else is static or fixed data.
It provides

- ``energy(positions, **kwargs) -> scalar`` (and ``__call__``): jax-md's
  ``energy_fn(R, **kwargs)`` convention. The keyword arguments understood
  throughout jaxiap are ``neighbor`` (a jax-md ``NeighborList``; None: the
  dense all-pairs path), ``box`` (None free cluster, (3,) orthorhombic
  lengths, (3, 3) cell rows, see :mod:`jaxiap.geometry`), ``species`` (N,)
  int and ``mask`` (N,) bool (real atoms);
- ``forces(positions, **kw)`` (N, 3) = -dE/dR by autodiff, and
  ``energy_and_forces``;
- ``cutoff``: interaction range for neighbour lists (None: no cutoff, the
  dense path only).

Because it is a PyTree, one object works everywhere:

- jax-md: ``simulate.nvt_langevin(energy_fn(pot, box=box), shift_fn, ...)``
  or simply ``pot.energy`` (:func:`energy_fn` binds fixed keyword arguments);
- jaxiap: :func:`jaxiap.md.quench.quench`, :class:`jaxiap.calculator.JaxiapCalculator`;
- samples: :func:`stack_parameters` gives a Potential whose leaves have a
  leading axis M, so ``jax.vmap(lambda p: p.energy(R))(stacked)`` maps over
  parameter samples;
- the FRT ensemble (:func:`jaxiap.md.ensemble.run_frt_ensemble`): its
  ``energy_fn(coefficients, positions)`` argument order is the MD layer's
  internal convention for "a potential with a stack of parameter samples";
  users pass a Potential through :func:`as_coefficient_energy` and
  ``parameters(stacked)``::

      stacked = stack_parameters(pot, samples)
      run_frt_ensemble(as_coefficient_energy(pot), parameters(stacked), seeds, start, settings)

A new potential only has to subclass :class:`Potential` and define
``energy``; the test suite does this for a Morse pair potential.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError


class Potential(eqx.Module):
    """Base class of potentials: subclasses define ``energy(positions, **kwargs) -> scalar``."""

    def energy(self, positions, **kwargs):
        """Potential energy (scalar) of one structure, positions (N, 3)."""
        raise NotImplementedError(f"{type(self).__name__} must define energy(positions, **kwargs)")

    def __call__(self, positions, **kwargs):
        return self.energy(positions, **kwargs)

    @property
    def cutoff(self):
        """Interaction range (length) for neighbour lists; None: no cutoff."""
        return None

    def forces(self, positions, **kwargs):
        """Forces (N, 3) = -dE/dR by reverse-mode autodiff."""
        return -jax.grad(lambda x: self.energy(x, **kwargs))(positions)

    def energy_and_forces(self, positions, **kwargs):
        """(energy, forces (N, 3)) from one forward and one backward pass."""
        e, g = jax.value_and_grad(lambda x: self.energy(x, **kwargs))(positions)
        return e, -g

    def parameter_spec(self):
        """PyTree of bools, like ``self``: True at the leaves that are parameters.

        Default: every inexact (floating or complex) array leaf. Override to
        exclude fixed data (basis hyperparameters, training inputs).
        """
        return jax.tree_util.tree_map(eqx.is_inexact_array, self)


def _check_potential(potential, where: str):
    if not isinstance(potential, Potential):
        raise JaxiapInputError(
            f"{where}: expected a jaxiap Potential (subclass of jaxiap.potentials.base.Potential), "
            f"got {type(potential).__name__}"
        )


def parameters(potential: Potential):
    """The parameters of ``potential`` as a PyTree of its structure (non-parameters are None)."""
    _check_potential(potential, "parameters")
    return eqx.filter(potential, potential.parameter_spec())


def with_parameters(potential: Potential, params):
    """``potential`` with its parameter leaves replaced by those of ``params`` (from :func:`parameters`)."""
    _check_potential(potential, "with_parameters")
    _, static = eqx.partition(potential, potential.parameter_spec())
    p_leaves, p_def = jax.tree_util.tree_flatten(params)
    ref_def = jax.tree_util.tree_structure(parameters(potential))
    if p_def != ref_def:
        raise JaxiapInputError(
            "with_parameters: params do not have the structure of parameters(potential); "
            "build them with jaxiap.potentials.base.parameters or stack_parameters"
        )
    return eqx.combine(params, static)


def _as_sample_params(potential, samples) -> Any:
    """Stacked parameter PyTree (leaves (M, ...)) from the accepted forms of ``samples``."""
    ref = parameters(potential)
    ref_leaves, ref_def = jax.tree_util.tree_flatten(ref)
    if isinstance(samples, Potential):
        # one sample (its parameters have the template's shapes), or a stacked tree such as parameters(stacked)
        one = [jnp.shape(x) for x in jax.tree_util.tree_leaves(parameters(samples))] == [jnp.shape(r) for r in ref_leaves]
        samples = [samples] if one else parameters(samples)
    if isinstance(samples, Sequence) and samples and all(isinstance(s, Potential) for s in samples):
        trees = [parameters(s) for s in samples]
        for k, t in enumerate(trees):
            if jax.tree_util.tree_structure(t) != ref_def:
                raise JaxiapInputError(
                    f"stack_parameters: samples[{k}] ({type(samples[k]).__name__}) does not have the parameter "
                    f"structure of the potential ({type(potential).__name__})"
                )
        for k, t in enumerate(trees):
            for x, r in zip(jax.tree_util.tree_leaves(t), ref_leaves):
                if jnp.shape(x) != jnp.shape(r):
                    raise JaxiapInputError(
                        f"stack_parameters: samples[{k}] has a parameter of shape {jnp.shape(x)} where the "
                        f"potential has {jnp.shape(r)}"
                    )
        samples = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
    elif eqx.is_array(samples) or isinstance(samples, np.ndarray):
        if len(ref_leaves) != 1:
            raise JaxiapInputError(
                f"stack_parameters: {type(potential).__name__} has {len(ref_leaves)} parameter leaves; pass "
                "samples as a list of Potentials or as a PyTree like parameters(potential) with a leading axis M"
            )
        samples = jax.tree_util.tree_unflatten(ref_def, [jnp.asarray(samples)])
    s_leaves, s_def = jax.tree_util.tree_flatten(samples)
    if s_def != ref_def:
        raise JaxiapInputError(
            "stack_parameters: samples must be a list of Potentials, an (M, ...) array (one-parameter "
            "potentials), or a PyTree like parameters(potential) whose leaves have a leading axis M"
        )
    ms = set()
    for x, r in zip(s_leaves, ref_leaves):
        x = jnp.asarray(x)
        if x.ndim != jnp.ndim(r) + 1 or tuple(x.shape[1:]) != tuple(jnp.shape(r)):
            raise JaxiapInputError(
                f"stack_parameters: a sample leaf has shape {tuple(x.shape)}; expected (M,) + {tuple(jnp.shape(r))}"
            )
        ms.add(x.shape[0])
    if len(ms) != 1 or 0 in ms:
        raise JaxiapInputError(f"stack_parameters: sample leaves disagree on M (got {sorted(ms)}) or M = 0")
    return samples


def stack_parameters(potential: Potential, samples) -> Potential:
    """A Potential whose array leaves all have a leading axis M: parameter samples, others broadcast.

    samples: a list of M Potentials of the same kind, an (M, ...) array (for
    a potential with a single parameter leaf, e.g. a LinearPotential's
    coefficients (M, K)), or a PyTree like :func:`parameters` with leading
    axis M. Non-parameter array leaves (basis hyperparameters, ...) are
    broadcast to M copies so that ``jax.vmap(lambda p: p.energy(R))(stacked)``
    works; for large fixed data use ``parameters(stacked)`` with
    :func:`with_parameters` inside the mapped function instead.
    """
    _check_potential(potential, "stack_parameters")
    stacked = _as_sample_params(potential, samples)
    m = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    _, static = eqx.partition(potential, potential.parameter_spec())
    static = jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(x, (m,) + x.shape) if eqx.is_array(x) else x, static
    )
    return eqx.combine(stacked, static)


def energy_fn(potential: Potential, **bound) -> Callable:
    """``energy(R, **kwargs) -> scalar`` closure for jax-md, with ``bound`` keyword arguments fixed.

    E.g. ``energy_fn(pot, box=box, species=species)``; keyword arguments given
    at call time (``neighbor=nbrs``) are added to (and override) the bound ones.
    """
    _check_potential(potential, "energy_fn")

    def energy(positions, **kwargs):
        return potential.energy(positions, **{**bound, **kwargs})

    return energy


def as_coefficient_energy(potential: Potential, **bound) -> Callable:
    """Adapter to the MD layer's ``energy(params, positions, **kw)`` convention.

    Used with :func:`jaxiap.md.ensemble.run_frt_ensemble`, which vmaps over
    a stack of parameter samples passed as its ``coefficients`` argument::

        run_frt_ensemble(as_coefficient_energy(pot), parameters(stack_parameters(pot, samples)), ...)

    ``params`` is one sample of :func:`parameters` (same structure); the
    non-parameter part of ``potential`` is closed over. ``bound`` keyword
    arguments (e.g. species) are passed to every energy call. Keep the
    returned function and reuse it: run_frt_ensemble caches its compiled
    program per function object.
    """
    _check_potential(potential, "as_coefficient_energy")
    _, static = eqx.partition(potential, potential.parameter_spec())

    def energy(params, positions, **kwargs):
        return eqx.combine(params, static).energy(positions, **{**bound, **kwargs})

    energy.__qualname__ = f"as_coefficient_energy[{type(potential).__name__}]"
    return energy
