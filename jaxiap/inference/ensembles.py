"""Committees of linear fits on resampled structures (docs/science.md section 14).

Each member is fitted on a random subset of the training STRUCTURES (all of a
structure's energy and force rows go in or out together, since the force
rows of one structure are strongly correlated): a fraction f drawn without
replacement (query-by-committee, default f = 0.8), or drawn with replacement
(bootstrap / query-by-bagging, ``replace=True``; a structure drawn m times
has its row weights multiplied by m). The committee is a ``SamplePosterior``
whose samples are the members' mean coefficients (float64).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.inference.linear import _check_design, fit_lstsq
from jaxiap.inference.posterior import SamplePosterior
from jaxiap.potentials.linear import DesignMatrix


def structure_counts(key, n_structures: int, n_members: int, fraction: float = 0.8,
                     replace: bool = False) -> np.ndarray:
    """(n_members, n_structures) integer multiplicities of each structure in each member.

    Each member draws round(fraction * n_structures) structures (at least 1),
    without replacement (counts 0/1) or with replacement (bootstrap).
    """
    if n_members < 1:
        raise JaxiapInputError(f"n_members must be >= 1, got {n_members}")
    if not 0 < fraction <= (np.inf if replace else 1.0):
        raise JaxiapInputError(f"fraction must be in (0, 1] without replacement (or > 0 with "
                               f"replace=True), got {fraction}")
    m = max(1, int(round(fraction * n_structures)))
    counts = np.zeros((n_members, n_structures), np.int64)
    for i, k in enumerate(jax.random.split(key, n_members)):
        if replace:
            idx = np.asarray(jax.random.randint(k, (m,), 0, n_structures))
        else:
            idx = np.asarray(jax.random.permutation(k, n_structures))[:m]
        np.add.at(counts[i], idx, 1)
    return counts


def member_design(design: DesignMatrix, counts) -> DesignMatrix:
    """The design with each row's weight multiplied by its structure's count.

    counts (S,) is indexed by the position of each structure id in
    ``np.unique(design.structure)``. Rows of structures left out get weight 0
    and are ignored by the solvers; keeping them gives every member the same
    shape (one compilation for all members).
    """
    _, inv = np.unique(np.asarray(design.structure), return_inverse=True)
    row_count = np.asarray(counts)[inv]
    return design._replace(w=jnp.asarray(np.asarray(design.w) * row_count))


def fit_committee(design: DesignMatrix, n_members: int, key, *, fraction: float = 0.8,
                  replace: bool = False, solver: Callable = fit_lstsq) -> SamplePosterior:
    """Fit ``n_members`` models on structure subsets; return their means as a SamplePosterior.

    design: the full DesignMatrix (R, K) with ``design.structure`` ids.
    solver: any DesignMatrix -> Posterior function (default ``fit_lstsq``; e.g.
    ``functools.partial(fit_blr, prior_precision=..., noise_var=...)``).
    The committee's ``noise_var`` is the average of the members' ``noise_var``
    (0 when the solver's posterior has none). kind: "committee" or "bootstrap".
    Members are stored in order, so ``post.sample(key, n_members, resample=False)``
    returns each member once.
    """
    _check_design(design)
    n_structures = len(np.unique(np.asarray(design.structure)))
    counts = structure_counts(key, n_structures, n_members, fraction, replace)
    means, noise = [], []
    for c in counts:
        post = solver(member_design(design, c))
        means.append(jnp.asarray(post.mean))
        noise.append(float(getattr(post, "noise_var", 0.0)))
    return SamplePosterior(jnp.stack(means), float(np.mean(noise)),
                           kind="bootstrap" if replace else "committee")
