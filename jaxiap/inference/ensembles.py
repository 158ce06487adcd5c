"""Committees of linear fits on resampled structures (docs/science.md section 14).

Each member is fitted on a random subset of the training STRUCTURES (all of a
structure's energy and force rows go in or out together, since the force
rows of one structure are strongly correlated): a fraction f drawn without
replacement (query-by-committee, default f = 0.8), or drawn with replacement
(bootstrap / query-by-bagging, ``replace=True``; a structure drawn m times
has its row weights multiplied by m). The committee is a ``SamplePosterior``
whose samples are the members' mean coefficients (float64).

Keys: :func:`structure_counts` draws, so it takes the key first (as
``jax.random`` and ``Posterior.sample``); :func:`fit_committee` fits, so its
key is keyword-only (as every solver's). The number of members is
``n_samples`` (each member is one coefficient sample).
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


def structure_counts(key, n_structures: int, n_samples: int, fraction: float = 0.8,
                     replace: bool = False) -> np.ndarray:
    """(n_samples, n_structures) integer multiplicities of each structure in each member.

    Each member draws round(fraction * n_structures) structures (at least 1),
    without replacement (counts 0/1) or with replacement (bootstrap).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise JaxiapInputError(f"n_samples (committee members) must be an integer >= 1, got {n_samples!r}")
    if not 0 < fraction <= (np.inf if replace else 1.0):
        raise JaxiapInputError(f"fraction must be in (0, 1] without replacement (or > 0 with "
                               f"replace=True), got {fraction}")
    m = max(1, int(round(fraction * n_structures)))
    counts = np.zeros((n_samples, n_structures), np.int64)
    for i, k in enumerate(jax.random.split(key, n_samples)):
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


def fit_committee(design: DesignMatrix, n_samples: int, *, key, fraction: float = 0.8,
                  replace: bool = False, solver: Callable = fit_lstsq) -> SamplePosterior:
    """Fit ``n_samples`` models on structure subsets; return their means as a SamplePosterior.

    design: the full DesignMatrix (R, K) with ``design.structure`` ids.
    key: jax random key (keyword-only) of the structure draws.
    solver: any ``solver(design) -> Posterior`` (a deterministic Solver of
    ``jaxiap.inference.solvers``, or a function; default ``fit_lstsq``; e.g.
    ``get_solver("blr", prior_precision=..., noise_var=...)``).
    The committee's ``noise_var`` is the average of the members' ``noise_var``.
    kind: "committee" or "bootstrap". Members are stored in order, so
    ``post.ensemble(key, n_samples)`` returns each member once.
    """
    if key is None:
        raise JaxiapInputError("fit_committee draws the members' structures: pass key=, e.g. key=jax.random.key(0)")
    _check_design(design)
    n_structures = len(np.unique(np.asarray(design.structure)))
    counts = structure_counts(key, n_structures, n_samples, fraction, replace)
    means, noise = [], []
    for c in counts:
        post = solver(member_design(design, c))
        means.append(jnp.asarray(post.mean))
        noise.append(float(post.noise_var))
    return SamplePosterior(jnp.stack(means), float(np.mean(noise)),
                           kind="bootstrap" if replace else "committee")
