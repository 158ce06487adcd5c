"""Hyperparameters of the GP force field by maximising the log marginal likelihood.

log p(y | theta) = -y^T K^-1 y / 2 - log|K| / 2 - R log(2 pi) / 2, with
K = sig2^2 K2(l2) + sig3^2 K3(l3) + diag(noise^2). Its gradient with respect
to log theta is tr((alpha alpha^T - K^-1) dK/dlog theta) / 2 (Rasmussen &
Williams eq. 5.9); dK/dl comes from forward-mode autodiff (one jvp) of the
kernel blocks, so no reverse pass through the pair sums is stored. The
optimiser is scipy's L-BFGS-B on log theta within bounds.

Freeze rule (FLARE's ``freeze_hyps``): the on-the-fly loop re-optimises
after each of its first ``freeze`` updates and then keeps the
hyperparameters, so later updates are incremental Cholesky extensions
(:meth:`jaxiap.potentials.gp.GaussianProcess.update`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize
import jax
import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.gp import ENERGY, STRESS, GaussianProcess, GPHyperparameters, _capacity, unit_blocks

#: log-space bounds of each hyperparameter (eV, Å units)
#: (length scales beyond ~2 Å make the kernels nearly constant over the distances inside a cutoff, and
#: K ill-conditioned; a 3-body length scale below ~0.2 Å makes every triplet independent, a white-noise
#: term that competes with the noise hyperparameter (seen on liquid Al); a force noise beyond 1 eV/Å
#: means the model explains nothing)
BOUNDS = {"sig2": (1e-4, 1e2), "l2": (0.1, 3.0), "sig3": (1e-5, 1e1), "l3": (0.2, 2.0),
          "noise": (1e-4, 1.0), "noise_energy": (1e-4, 10.0), "noise_stress": (1e-6, 1.0)}


def _blocks_and_tangents(envs, settings, l2, l3):
    return jax.jvp(lambda a, b: unit_blocks(envs, envs, settings, a, b), (l2, l3),
                   (jnp.ones_like(l2), jnp.ones_like(l3)))


_blocks_and_tangents_jit = jax.jit(_blocks_and_tangents, static_argnames=("settings",))


def free_hyperparameters(gp: GaussianProcess) -> tuple[str, ...]:
    """Names optimised by default: the signal and length scales in use and the noises of the label kinds present."""
    kinds = {r.kind for r in gp._rows}
    names = ["sig2", "l2"]
    if gp.settings.three_body:
        names += ["sig3", "l3"]
    if 0 in kinds:
        names.append("noise")
    if ENERGY in kinds:
        names.append("noise_energy")
    if STRESS in kinds:
        names.append("noise_stress")
    return tuple(names)


class _Objective:
    """-log marginal likelihood and its gradient in log space, caching blocks per length scale."""

    def __init__(self, gp: GaussianProcess, names):
        self.gp, self.names = gp, tuple(names)
        self.y = gp.targets
        self.kinds = np.array([r.kind for r in gp._rows], int)
        self._cache_key = None

    def _grams(self, l2, l3):
        key = (float(l2), float(l3))
        if self._cache_key != key and "l2" not in self.names and "l3" not in self.names:
            # length scales fixed: the GP's own blocks (kept up to date incrementally), no tangents needed
            gp = self.gp
            gp._compute_blocks(gp.hyperparameters._replace(l2=key[0], l3=key[1]))
            k2, k3 = gp._unit_grams(gp._rows)
            self._grams_value = (k2, k3, None, None, gp._blocks)
            self._cache_key = key
        if self._cache_key != key:
            gp = self.gp
            m = gp.n_environments
            envs = gp._all_envs(_capacity(m))
            b, db = _blocks_and_tangents_jit(envs, gp.settings, jnp.asarray(l2), jnp.asarray(l3))
            b, db = np.asarray(b)[:, :m, :m], np.asarray(db)[:, :m, :m]
            k2, k3 = gp._unit_grams(gp._rows, blocks=b)
            d2, d3 = gp._unit_grams(gp._rows, blocks=db)
            self._grams_value = (k2, k3, d2, d3, b)
            self._cache_key = key
        return self._grams_value

    def hyperparameters(self, log_theta) -> GPHyperparameters:
        values = self.gp.hyperparameters._asdict()
        for n, v in zip(self.names, np.exp(log_theta)):
            values[n] = float(v)
        return GPHyperparameters(**values)

    def __call__(self, log_theta):
        h = self.hyperparameters(log_theta)
        k2, k3, d2, d3, _ = self._grams(h.l2, h.l3)
        noise = np.array([h.noise, h.noise_energy, h.noise_stress])[self.kinds] ** 2
        k = h.sig2**2 * k2 + h.sig3**2 * k3 + np.diag(noise)
        k = 0.5 * (k + k.T)
        try:
            chol = np.linalg.cholesky(k)
        except np.linalg.LinAlgError:  # numerically singular: retry with a jitter of 1e-10 of the mean diagonal
            try:
                chol = np.linalg.cholesky(k + 1e-10 * np.mean(np.diag(k)) * np.eye(len(k)))
            except np.linalg.LinAlgError:
                return 1e30, np.zeros(len(self.names))
        alpha = scipy.linalg.cho_solve((chol, True), self.y)
        lml = -0.5 * self.y @ alpha - np.sum(np.log(np.diag(chol))) - 0.5 * len(self.y) * np.log(2 * np.pi)
        w = np.outer(alpha, alpha) - scipy.linalg.cho_solve((chol, True), np.eye(len(self.y)))
        dk = {"sig2": 2 * h.sig2**2 * k2, "sig3": 2 * h.sig3**2 * k3}
        if d2 is not None:
            dk.update(l2=h.sig2**2 * h.l2 * d2, l3=h.sig3**2 * h.l3 * d3)
        grad = []
        for n in self.names:
            if n in dk:
                grad.append(0.5 * np.sum(w * dk[n]))
            else:
                kind = {"noise": 0, "noise_energy": ENERGY, "noise_stress": STRESS}[n]
                sel = self.kinds == kind
                grad.append(0.5 * np.sum(np.diag(w)[sel]) * 2 * getattr(h, n) ** 2)
        return -float(lml), -np.asarray(grad)


def log_marginal_likelihood(gp: GaussianProcess, hyperparameters=None, names=None):
    """(lml, gradient with respect to log of each name in ``names``) at ``hyperparameters`` (default: the GP's)."""
    names = free_hyperparameters(gp) if names is None else tuple(names)
    obj = _Objective(gp, names)
    hyp = gp.hyperparameters if hyperparameters is None else GPHyperparameters(*hyperparameters)
    f, g = obj(np.log([getattr(hyp, n) for n in names]))
    return -f, -g


def optimize_hyperparameters(gp: GaussianProcess, names=None, max_iterations: int = 50, bounds=None):
    """Maximise the log marginal likelihood over ``names`` (default :func:`free_hyperparameters`); refits the GP.

    Returns a dict with the new hyperparameters, the log marginal likelihood,
    the number of evaluations and scipy's message.
    """
    if gp.n_rows == 0:
        raise JaxiapInputError("optimize_hyperparameters: the GP has no training data")
    names = free_hyperparameters(gp) if names is None else tuple(names)
    unknown = set(names) - set(BOUNDS)
    if unknown:
        raise JaxiapInputError(f"optimize_hyperparameters: unknown names {sorted(unknown)}; choose from {list(BOUNDS)}")
    bounds = {**BOUNDS, **(bounds or {})}
    obj = _Objective(gp, names)
    x0 = np.log([min(max(getattr(gp.hyperparameters, n), bounds[n][0]), bounds[n][1]) for n in names])
    res = scipy.optimize.minimize(obj, x0, jac=True, method="L-BFGS-B",
                                  bounds=[tuple(np.log(bounds[n])) for n in names],
                                  options={"maxiter": int(max_iterations)})
    best = obj.hyperparameters(res.x)
    blocks = obj._grams(best.l2, best.l3)[4]
    gp.set_hyperparameters(best)
    gp._blocks, gp._blocks_l = blocks, (best.l2, best.l3)
    gp.refit()
    return {"hyperparameters": best._asdict(), "log_marginal_likelihood": -float(res.fun),
            "evaluations": int(res.nfev), "message": str(res.message)}
