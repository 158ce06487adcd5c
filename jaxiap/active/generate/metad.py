"""Well-tempered metadynamics along any differentiable scalar collective variable s(x).

Bias (Barducci, Bussi, Parrinello 2008), in the energy units of the MD:

    V(s) = sum_t w_t exp(-(s - s_t)^2 / (2 width^2)),
    w_t  = height exp(-V(s_t) / DeltaT),   DeltaT = (bias_factor - 1) kT,

with a hill deposited at s_t = s(x_t) after every block of ``pace`` steps.
For long runs V(s) -> -(1 - 1/bias_factor) F(s) + const (F the free energy
along s); bias_factor = inf gives plain metadynamics (w_t = height).

The CV may be any scalar function of positions: the GMM uncertainty
(:func:`jaxiap.uq.gmm.structure_uncertainty`), the energy std
sqrt(b^T Sigma b) (:func:`jaxiap.active.generate.uncertainty.linear_energy_std`),
a coordinate. The bias force is -d V(s(x))/dx by autodiff. The hills live
in fixed-size arrays (``max_hills``, unused ones of height 0), so the whole
run is one jitted ``lax.scan`` over blocks.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError
from jaxiap.md.integrators import block_langevin

__all__ = ["MetadResult", "metad_bias", "metad_energy_fn", "run_metad"]


class MetadResult(NamedTuple):
    """frames (T, N, 3) and cv (T,) after each block (T = n_blocks), the hills (centres and heights
    (max_hills,); the first n_hills are deposited), width, and n_force_evals of the MD."""

    frames: jnp.ndarray
    cv: jnp.ndarray
    hill_centers: jnp.ndarray
    hill_heights: jnp.ndarray
    n_hills: int
    width: float
    n_force_evals: int

    def bias(self, s):
        """V(s) of the final hills at CV values s (...)."""
        return metad_bias(s, self.hill_centers, self.hill_heights, self.width)


def metad_bias(s, centers, heights, width):
    """V(s) = sum_t heights_t exp(-(s - centers_t)^2 / (2 width^2)) for s (...)."""
    s = jnp.asarray(s)[..., None]
    return jnp.sum(heights * jnp.exp(-((s - centers) ** 2) / (2.0 * width**2)), axis=-1)


def metad_energy_fn(energy_fn: Callable, cv_fn: Callable, width: float):
    """``energy(positions, centers, heights) -> energy_fn(positions) + V(cv_fn(positions))``."""

    def energy(positions, centers, heights):
        return energy_fn(positions) + metad_bias(cv_fn(positions), centers, heights, width)

    return energy


def run_metad(key, energy_fn: Callable, cv_fn: Callable, x0, *, kT: float, dt: float, gamma: float,
              n_blocks: int, block_steps: int, height: float, width: float, bias_factor: float,
              max_hills: int | None = None, mass: float = 1.0) -> MetadResult:
    """Well-tempered metadynamics: ``n_blocks`` blocks of ``block_steps`` (= the deposition pace)
    BAOAB steps on energy_fn + V(cv_fn), a hill after each block (module docstring).

    x0 (N, 3) (one trajectory). height (energy), width (CV units), bias_factor > 1
    (inf: untempered). max_hills >= n_blocks (default n_blocks).
    """
    max_hills = int(n_blocks) if max_hills is None else int(max_hills)
    if max_hills < n_blocks:
        raise JaxiapInputError(f"run_metad: max_hills={max_hills} < n_blocks={n_blocks} (one hill per block)")
    if not bias_factor > 1:
        raise JaxiapInputError(f"run_metad: bias_factor={bias_factor!r} must be > 1 (inf for plain metadynamics)")
    x0 = jnp.asarray(x0)
    delta_t = (float(bias_factor) - 1.0) * kT
    biased = metad_energy_fn(energy_fn, cv_fn, width)
    init, run = block_langevin(biased, dt=dt, gamma=gamma, kT=kT, mass=mass)
    zeros = jnp.zeros(max_hills, x0.dtype)

    @jax.jit
    def go(key, x0):
        state = init(key, x0, centers=zeros, heights=zeros)

        def body(carry, t):
            state, centers, heights = carry
            state, _ = run(state, 1, int(block_steps), lambda s: None, centers=centers, heights=heights)
            s = cv_fn(state.position)
            w = height * jnp.exp(-metad_bias(s, centers, heights, width) / delta_t)
            centers, heights = centers.at[t].set(s), heights.at[t].set(w)
            f = -jax.grad(biased)(state.position, centers, heights)  # the bias changed: refresh the force
            return (state._replace(force=f), centers, heights), (state.position, s)

        (_, centers, heights), (frames, cvs) = jax.lax.scan(body, (state, zeros, zeros), jnp.arange(n_blocks))
        return frames, cvs, centers, heights

    frames, cvs, centers, heights = go(key, x0)
    n_evals = 1 + int(n_blocks) * (int(block_steps) + 1)
    return MetadResult(frames, cvs, centers, heights, int(n_blocks), float(width), n_evals)
