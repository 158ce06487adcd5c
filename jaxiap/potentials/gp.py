"""A 2+3-body Gaussian-process force field (FLARE): training on energies, forces and stresses.

Model (Vandermause et al., npj Comput. Mater. 6, 20 (2020); docs/gp.md):
E = sum of pair energies phi + sum of triplet energies psi, with independent
GP priors of signal variances sig2^2, sig3^2 and squared-exponential length
scales l2, l3 on the distances, quadratic cutoffs r_cut (2-body) and
r_cut_3 (3-body) (:mod:`jaxiap.potentials.gp_kernels`). Every label is a
linear functional of phi and psi, so the GP is exact: a force component is
the derivative of the local sums with respect to the central atom, an
energy the sum of local energies, a stress their strain derivative divided
by the volume (ASE's sign and Voigt order). Noise: ``noise`` on force
components (eV/Å), ``noise_energy`` on total energies (eV), ``noise_stress``
on stress components (eV/Å^3).

:class:`GaussianProcess` holds the training set on the host and the
factorisation of K + noise; ``add`` labels, ``update()`` extends the
Cholesky factor by the new row block (O(n^2 b), hyperparameters fixed) and
``refit()`` refactorises; :mod:`jaxiap.potentials.gp_train` maximises the
log marginal likelihood. :meth:`GaussianProcess.predict` gives energies,
forces and stresses with their epistemic standard deviations; the posterior
mean is a :class:`GPPotential` (a Potential: every MD program runs it).
An optional ``baseline`` (:class:`~jaxiap.potentials.repulsion.CoreRepulsion`
or a fitted :class:`~jaxiap.potentials.repulsion.PairPrior`) is a fixed prior mean: labels are fitted as residuals from it and it is
added back to every prediction. Units: eV, Å.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxiap.descriptors.environments import (Environments, check_environments, compact, environments, image_shifts,
                                             used_capacities)
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.base import Potential
from jaxiap.potentials.gp_blocks import pair_elements, se_blocks, triplet_elements
from jaxiap.potentials.repulsion import PRIOR_MEANS, CoreRepulsion, PairPrior, prior_from_dict, prior_to_dict

#: Voigt order of ASE stresses (xx yy zz yz xz xy) as pairs of strain indices.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
#: Per-body weights of an energy (or stress) label on the local sums S2, S3: E = sum_i S2_i / 2 + S3_i / 3.
ENERGY_WEIGHTS = (0.5, 1.0 / 3.0)


@dataclass(frozen=True)
class GPSettings:
    """Static settings of the model: cutoffs (Å) and environment capacities.

    r_cut: 2-body cutoff; r_cut_3: 3-body cutoff (<= r_cut; None: 2-body only);
    max_neighbors: neighbour slots per atom within r_cut; max_triplet_neighbors:
    the nearest slots searched for triplets; max_triplets: triplet slots per atom;
    stress: carry strain derivatives (needed to train on or predict stresses).
    """

    r_cut: float = 5.4
    r_cut_3: float | None = 3.2
    max_neighbors: int = 64
    max_triplet_neighbors: int = 24
    max_triplets: int = 96
    stress: bool = False

    def __post_init__(self):
        if not (np.isfinite(self.r_cut) and self.r_cut > 0):
            raise JaxiapInputError(f"GPSettings: r_cut={self.r_cut!r} must be a positive length (Å)")
        if self.r_cut_3 is not None and not (0 < self.r_cut_3 <= self.r_cut):
            raise JaxiapInputError(
                f"GPSettings: r_cut_3={self.r_cut_3!r} must be in (0, r_cut={self.r_cut}] (or None for 2-body only)")
        for name in ("max_neighbors", "max_triplet_neighbors", "max_triplets"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise JaxiapInputError(f"GPSettings: {name}={v!r} must be a positive integer")

    @property
    def n_p(self) -> int:
        """Perturbation components per environment: 3 (centre shift) or 12 (and strain)."""
        return 12 if self.stress else 3

    @property
    def three_body(self) -> bool:
        return self.r_cut_3 is not None


class GPHyperparameters(NamedTuple):
    """Signal stds sig2, sig3 (eV / cutoff^2 units), length scales l2, l3 (Å), noise stds."""

    sig2: float = 1.0
    l2: float = 0.5
    sig3: float = 0.1
    l3: float = 0.5
    noise: float = 0.05          # force components, eV/Å
    noise_energy: float = 0.05   # total energies, eV
    noise_stress: float = 0.005  # stress components, eV/Å^3

    def check(self, where: str = "GPHyperparameters") -> "GPHyperparameters":
        for k, v in self._asdict().items():
            if not (np.isfinite(v) and v > 0):
                raise JaxiapInputError(f"{where}: {k}={v!r} must be a positive finite number")
        return self


class _Row(NamedTuple):
    kind: int               # 0 force, 1 energy, 2 stress
    envs: tuple             # stored environment ids
    weight: float           # env weight (1, or 1 / volume for stress)
    comp: np.ndarray        # (Q,) component vector over (value, delta, eps)
    value: float


FORCE, ENERGY, STRESS = 0, 1, 2


def structure_environments(positions, cell, species, settings: GPSettings) -> Environments:
    """Environments of one structure (numpy in, device arrays out), capacity-checked."""
    positions = np.asarray(positions, float)
    cell = None if cell is None else np.asarray(cell, float)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise JaxiapInputError(f"positions must be (N, 3); got {positions.shape}")
    species = np.zeros(len(positions), int) if species is None else np.asarray(species, int)
    shifts = image_shifts(cell, settings.r_cut)
    env = _env_jit(jnp.asarray(positions), None if cell is None else jnp.asarray(cell), jnp.asarray(species),
                   settings, tuple(tuple(int(v) for v in row) for row in shifts))
    check_environments(env, "GaussianProcess")
    return env


def _environments_static(positions, cell, species, settings: GPSettings, shifts: tuple):
    return environments(positions, cell, species, settings.r_cut,
                        settings.r_cut_3 if settings.three_body else settings.r_cut,
                        settings.max_neighbors, settings.max_triplet_neighbors if settings.three_body else 0,
                        settings.max_triplets if settings.three_body else 1, shifts=np.asarray(shifts, int))


_env_jit = jax.jit(_environments_static, static_argnames=("settings", "shifts"))


def elements(envs: Environments, settings: GPSettings, n_p: int, train: bool):
    """(pair Elements, triplet Elements or None) of stacked environments."""
    pairs = pair_elements(envs, settings.r_cut, n_p)
    trip = triplet_elements(envs, settings.r_cut_3, n_p, permute=train) if settings.three_body else None
    return pairs, trip


def unit_blocks(query: Environments, train: Environments, settings: GPSettings, l2, l3, n_p_query: int | None = None):
    """Blocks (2, N, M, P, Q) of the unit-signal 2- and 3-body kernels (:func:`se_blocks`)."""
    n_p = settings.n_p
    qp, qt = elements(query, settings, n_p if n_p_query is None else n_p_query, train=False)
    tp, tt = elements(train, settings, n_p, train=True)
    b2 = se_blocks(qp, tp, l2)
    b3 = se_blocks(qt, tt, l3) if settings.three_body else jnp.zeros_like(b2)
    return jnp.stack([b2, b3])


_unit_blocks_jit = jax.jit(unit_blocks, static_argnames=("settings", "n_p_query"))


def _stack_envs(envs: list[Environments], capacity: int, template: Environments) -> Environments:
    """Stack single environments (leading axis 1 each) and pad to ``capacity`` with empty ones."""
    parts = envs + [_empty_like(template)] * (capacity - len(envs))
    return Environments(*[jnp.concatenate([getattr(e, f) for e in parts], axis=0) if f != "overflow"
                          else jnp.asarray(False) for f in Environments._fields])


def _empty_like(env: Environments) -> Environments:
    return Environments(jnp.zeros_like(env.vectors), jnp.zeros_like(env.mask), jnp.zeros_like(env.species),
                        jnp.zeros_like(env.center_species), jnp.zeros_like(env.triplets),
                        jnp.zeros_like(env.triplet_mask), jnp.asarray(False))


def _capacity(n: int, minimum: int = 16) -> int:
    c = minimum
    while c < n:
        c *= 2
    return c


@dataclass
class GaussianProcess:
    """The 2+3-body GP force field with its training set (host-side, mutable; see the module docstring)."""

    settings: GPSettings = field(default_factory=GPSettings)
    hyperparameters: GPHyperparameters = field(default_factory=GPHyperparameters)
    baseline: CoreRepulsion | PairPrior | None = None

    def __post_init__(self):
        self.hyperparameters = GPHyperparameters(*self.hyperparameters).check()
        if self.baseline is not None:
            if not isinstance(self.baseline, tuple(PRIOR_MEANS.values())):
                raise JaxiapInputError(f"GaussianProcess: baseline must be a CoreRepulsion, a PairPrior or None; got "
                                       f"{self.baseline!r}")
            if self.baseline.range > self.settings.r_cut:
                raise JaxiapInputError(f"GaussianProcess: the baseline's range {self.baseline.range} Å exceeds "
                                       f"r_cut={self.settings.r_cut} Å; lower it or raise r_cut")
        self._envs: list[Environments] = []      # single environments, leading axis 1
        self._env_keys: dict = {}
        self._rows: list[_Row] = []
        self._n_structures = 0
        self._blocks = None       # (2, M, M, Q, Q) numpy at the current length scales
        self._blocks_l = None
        self._n_factored = 0      # rows covered by the Cholesky factor
        self._chol = None
        self._alpha = None
        self._template = None
        self._device_cache = None
        self._query_slots = (0, 0)
        self._records: list[dict] = []

    # ----------------------------------------------------------------- data
    @property
    def n_rows(self) -> int:
        return len(self._rows)

    @property
    def n_environments(self) -> int:
        return len(self._envs)

    @property
    def n_force_atoms(self) -> int:
        """Training environments carrying force labels."""
        return len({r.envs[0] for r in self._rows if r.kind == FORCE})

    def _env_id(self, key, env: Environments, i: int) -> int:
        if key in self._env_keys:
            return self._env_keys[key]
        one = jax.tree_util.tree_map(lambda a: a[i:i + 1] if a.ndim else a, env)
        if self._template is None:
            self._template = one
        self._envs.append(one)
        self._env_keys[key] = len(self._envs) - 1
        return len(self._envs) - 1

    def add(self, positions, cell=None, species=None, *, forces=None, atoms=None, energy=None, stress=None) -> int:
        """Add one labelled structure; returns the number of rows added.

        positions (N, 3) Å, cell (3, 3) rows or None, species (N,) atomic
        numbers (or any ints); forces (N, 3) eV/Å with ``atoms`` the indices
        whose forces are used (default all); energy (eV, total); stress (6,)
        Voigt or (3, 3) eV/Å^3 (ASE's convention; needs ``settings.stress``).
        Call :meth:`update` (or :meth:`refit`) afterwards.
        """
        positions = np.asarray(positions, float)
        n = len(positions)
        if forces is None and energy is None and stress is None:
            raise JaxiapInputError("GaussianProcess.add: give at least one of forces=, energy=, stress=")
        if stress is not None and not self.settings.stress:
            raise JaxiapInputError("GaussianProcess.add: stress labels need GPSettings(stress=True)")
        if stress is not None and cell is None:
            raise JaxiapInputError("GaussianProcess.add: a stress label needs the cell")
        # validate every label before changing anything (a failed add leaves the GP as it was)
        if forces is not None:
            forces = np.asarray(forces, float)
            if forces.shape != (n, 3):
                raise JaxiapInputError(f"GaussianProcess.add: forces must be (N, 3) = ({n}, 3); got {forces.shape}")
            idx = range(n) if atoms is None else [int(i) for i in np.atleast_1d(atoms)]
            for i in idx:
                if not 0 <= i < n:
                    raise JaxiapInputError(f"GaussianProcess.add: atom index {i} out of range for {n} atoms")
        if stress is not None:
            stress = np.asarray(stress, float)
            if stress.shape == (3, 3):
                stress = np.array([stress[a, b] for a, b in VOIGT])
            if stress.shape != (6,):
                raise JaxiapInputError(f"GaussianProcess.add: stress must be (6,) Voigt or (3, 3); got {stress.shape}")
        env = structure_environments(positions, cell, species, self.settings)
        base = self._baseline_terms(positions, cell, species, stress=stress is not None)
        s = self._n_structures
        self._n_structures += 1
        self._records.append({"positions": positions, "cell": None if cell is None else np.asarray(cell, float),
                              "species": None if species is None else np.asarray(species, int),
                              "forces": None if forces is None else np.asarray(forces, float),
                              "atoms": None if atoms is None else np.asarray(atoms, int).reshape(-1),
                              "energy": energy, "stress": None if stress is None else np.asarray(stress, float)})
        q = 1 + self.settings.n_p
        added = 0
        if forces is not None:
            for i in idx:
                e = self._env_id((s, i), env, i)
                for a in range(3):
                    comp = np.zeros(q)
                    comp[1 + a] = -1.0   # F = -dS/d(delta)
                    self._rows.append(_Row(FORCE, (e,), 1.0, comp, float(forces[i, a] - base["forces"][i, a])))
                    added += 1
        if energy is not None or stress is not None:
            ids = tuple(self._env_id((s, i), env, i) for i in range(n))
            if energy is not None:
                comp = np.zeros(q)
                comp[0] = 1.0
                self._rows.append(_Row(ENERGY, ids, 1.0, comp, float(energy) - base["energy"]))
                added += 1
            if stress is not None:
                volume = abs(np.linalg.det(np.asarray(cell, float)))
                for v, (a, b) in enumerate(VOIGT):
                    comp = np.zeros(q)
                    comp[4 + 3 * a + b] += 0.5
                    comp[4 + 3 * b + a] += 0.5
                    self._rows.append(_Row(STRESS, ids, 1.0 / volume, comp, float(stress[v] - base["stress"][v])))
                    added += 1
        self._device_cache = None
        return added

    def _baseline_terms(self, positions, cell, species, stress: bool = False) -> dict:
        """The prior mean's energy (eV), forces (N, 3) and, with ``stress``, Voigt stress (6,): zeros without one."""
        n = len(positions)
        if self.baseline is None:
            return {"energy": 0.0, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}
        if isinstance(self.baseline, CoreRepulsion) and self.baseline.z is None and (
                species is None or np.min(np.asarray(species)) < 1):
            raise JaxiapInputError("GaussianProcess: the CoreRepulsion baseline needs atomic numbers; pass species= "
                                   "(atomic numbers) or set CoreRepulsion(z=...)")
        cell_j = None if cell is None else jnp.asarray(np.asarray(cell, float))
        species = np.zeros(n, int) if species is None else np.asarray(species, int)
        shifts = tuple(tuple(int(v) for v in row) for row in image_shifts(
            None if cell is None else np.asarray(cell, float), self.settings.r_cut))
        out = _baseline_jit(jnp.asarray(positions, float), cell_j, jnp.asarray(species), self.settings, shifts,
                            self.baseline, stress and cell is not None)
        return {k: (float(v) if k == "energy" else np.asarray(v)) for k, v in out.items()}

    # ------------------------------------------------------------ algebra
    def _all_envs(self, capacity=None) -> Environments:
        m = len(self._envs)
        return _stack_envs(self._envs, m if capacity is None else capacity, self._template)

    def _compute_blocks(self, hyp: GPHyperparameters):
        """Unit-signal blocks between stored environments; new ones only when the length scales are unchanged."""
        m = len(self._envs)
        ls = (hyp.l2, hyp.l3)
        m_old = 0 if (self._blocks is None or self._blocks_l != ls) else self._blocks.shape[1]
        if m_old == m:
            return
        cap = _capacity(m)
        all_envs = self._all_envs(cap)
        new = _stack_envs(self._envs[m_old:], _capacity(m - m_old, minimum=1), self._template)  # few wasted pairs
        b_new = np.asarray(_unit_blocks_jit(new, all_envs, self.settings, hyp.l2, hyp.l3))[:, : m - m_old, :m]
        q = b_new.shape[-1]
        blocks = np.zeros((2, m, m, q, q))
        if m_old:
            blocks[:, :m_old, :m_old] = self._blocks
        blocks[:, m_old:, :] = b_new
        blocks[:, :m_old, m_old:] = np.swapaxes(np.swapaxes(b_new[:, :, :m_old], 1, 2), 3, 4)
        self._blocks, self._blocks_l = blocks, ls

    def _design(self, rows) -> np.ndarray:
        """Phi (2, R, M, Q): each row as weights over (environment, component), per body order."""
        m = len(self._envs)
        q = 1 + self.settings.n_p
        phi = np.zeros((2, len(rows), m, q))
        for r, row in enumerate(rows):
            bw = (1.0, 1.0) if row.kind == FORCE else ENERGY_WEIGHTS
            for e in row.envs:
                for c in range(2):
                    phi[c, r, e] += bw[c] * row.weight * row.comp
        return phi

    def _unit_grams(self, rows_a, rows_b=None, blocks=None):
        """(K2, K3) unit-signal Gram matrices between row sets."""
        blocks = self._blocks if blocks is None else blocks
        pa = self._design(rows_a)
        pb = pa if rows_b is None else self._design(rows_b)
        m, q = blocks.shape[1], blocks.shape[-1]
        out = []
        for c in range(2):
            bmat = blocks[c].transpose(0, 2, 1, 3).reshape(m * q, m * q)
            out.append(pa[c].reshape(len(pa[c]), -1) @ bmat @ pb[c].reshape(len(pb[c]), -1).T)
        return out

    def _noise_vector(self, rows, hyp) -> np.ndarray:
        table = np.array([hyp.noise, hyp.noise_energy, hyp.noise_stress]) ** 2
        return table[np.array([r.kind for r in rows], int)]

    def kernel_matrix(self, hyp: GPHyperparameters | None = None) -> np.ndarray:
        """K + noise (R, R) of the training rows (recomputes the blocks if the length scales changed)."""
        hyp = self.hyperparameters if hyp is None else hyp
        self._compute_blocks(hyp)
        k2, k3 = self._unit_grams(self._rows)
        return hyp.sig2**2 * k2 + hyp.sig3**2 * k3 + np.diag(self._noise_vector(self._rows, hyp))

    @property
    def targets(self) -> np.ndarray:
        return np.array([r.value for r in self._rows])

    def refit(self) -> "GaussianProcess":
        """Factorise K + noise from scratch at the current hyperparameters."""
        if not self._rows:
            raise JaxiapInputError("GaussianProcess: no training data; add labelled structures first")
        k = self.kernel_matrix()
        self._chol = _cholesky(k)
        self._n_factored = len(self._rows)
        self._solve()
        return self

    def update(self) -> "GaussianProcess":
        """Extend the Cholesky factor by the rows added since the last factorisation (hyperparameters fixed).

        With L the factor of the first n rows, the new block B of b rows has
        L21 = (L^-1 K12)^T and L22 = chol(K22 - L21 L21^T): O(n^2 b) instead
        of the O((n + b)^3) of :meth:`refit` (which this falls back to when
        nothing is factorised yet or the length scales changed).
        """
        hyp = self.hyperparameters
        if self._chol is None or self._blocks_l != (hyp.l2, hyp.l3):
            return self.refit()
        n, n_all = self._n_factored, len(self._rows)
        if n_all == n:
            return self
        self._compute_blocks(hyp)
        old, new = self._rows[:n], self._rows[n:]
        k2a, k3a = self._unit_grams(new, old)
        k2b, k3b = self._unit_grams(new)
        k12 = (hyp.sig2**2 * k2a + hyp.sig3**2 * k3a).T
        k22 = hyp.sig2**2 * k2b + hyp.sig3**2 * k3b + np.diag(self._noise_vector(new, hyp))
        l21 = scipy.linalg.solve_triangular(self._chol, k12, lower=True).T
        l22 = _cholesky(k22 - l21 @ l21.T)
        chol = np.zeros((n_all, n_all))
        chol[:n, :n] = self._chol
        chol[n:, :n] = l21
        chol[n:, n:] = l22
        self._chol, self._n_factored = chol, n_all
        self._solve()
        return self

    def _solve(self):
        self._alpha = scipy.linalg.cho_solve((self._chol, True), self.targets)
        self._device_cache = None

    def log_marginal_likelihood(self) -> float:
        """log p(y | hyperparameters) = -y^T alpha / 2 - sum log diag L - R log(2 pi) / 2."""
        if self._chol is None or self._n_factored != len(self._rows):
            self.update()
        y = self.targets
        return float(-0.5 * y @ self._alpha - np.sum(np.log(np.diag(self._chol))) - 0.5 * len(y) * np.log(2 * np.pi))

    def set_hyperparameters(self, hyp) -> "GaussianProcess":
        """New hyperparameters (refactorises at the next update)."""
        self.hyperparameters = GPHyperparameters(*hyp).check()
        self._chol = None
        self._device_cache = None
        return self

    # ----------------------------------------------------------- prediction
    def _device_state(self):
        """Padded device arrays of the training set for the jitted predictions (cached)."""
        if self._device_cache is not None:
            return self._device_cache
        if self._chol is None or self._n_factored != len(self._rows):
            self.update()
        m, r = len(self._envs), len(self._rows)
        m_cap, r_cap = _capacity(m), _capacity(r)
        phi = np.zeros((2, r_cap, m_cap, 1 + self.settings.n_p))
        phi[:, :r, :m] = self._design(self._rows)
        chol = np.eye(r_cap)
        chol[:r, :r] = self._chol
        alpha = np.zeros(r_cap)
        alpha[:r] = self._alpha
        hyp = self.hyperparameters
        sig = np.array([hyp.sig2, hyp.sig3]) ** 2
        weights = np.einsum("crmq,r->cmq", phi, alpha) * sig[:, None, None]
        train_envs = self._all_envs(m_cap)
        k_used, t_used = self._slots(train_envs)
        train_envs = compact(train_envs, k_used, t_used)
        self._device_cache = GPState(train_envs, jnp.asarray(phi * sig[:, None, None, None]),
                                     jnp.asarray(chol), jnp.asarray(weights), jnp.asarray([hyp.l2, hyp.l3]),
                                     jnp.asarray(sig))
        return self._device_cache

    def _slots(self, env: Environments, sticky: bool = False) -> tuple[int, int]:
        """Slots to keep: those used (rounded up to 8), never fewer neighbours than the triplet search uses.

        ``sticky``: never fewer than the largest query so far, so repeated
        predictions (an MD run) recompile only when an environment grows.
        """
        k, t = used_capacities(env)
        if self.settings.three_body:
            k = max(k, min(self.settings.max_triplet_neighbors, env.mask.shape[-1]))
        if sticky:
            k, t = max(k, self._query_slots[0]), max(t, self._query_slots[1])
            self._query_slots = (k, t)
        return k, t

    def predict(self, positions, cell=None, species=None, *, energy_std: bool = True, stress: bool = False):
        """Posterior mean and epistemic std of one structure.

        Returns a dict: ``energy`` (eV), ``energy_std`` (if asked), ``forces``
        (N, 3) eV/Å, ``forces_std`` (N, 3), and with ``stress=True`` (needs
        ``settings.stress``) ``stress`` (6,) and ``stress_std`` (6,) in ASE's
        Voigt order, eV/Å^3. Standard deviations exclude the noise.
        """
        if stress and not self.settings.stress:
            raise JaxiapInputError("GaussianProcess.predict: stress=True needs GPSettings(stress=True)")
        env = structure_environments(positions, cell, species, self.settings)
        env = compact(env, *self._slots(env, sticky=True))
        state = self._device_state()
        volume = 1.0 if cell is None else abs(float(np.linalg.det(np.asarray(cell, float))))
        out = {k: np.asarray(v) for k, v in _predict_jit(env, state, self.settings, energy_std, stress, volume).items()}
        if self.baseline is not None:
            base = self._baseline_terms(positions, cell, species, stress=stress)
            out["energy"] = out["energy"] + base["energy"]
            out["forces"] = out["forces"] + base["forces"]
            if stress:
                out["stress"] = out["stress"] + base["stress"]
        return out

    def energy_variance_fn(self, cell=None):
        """``fn(positions (N, 3), mask=None) -> Var[E]`` (eV^2), differentiable: for biased MD and attacks.

        The species are those of the first training structure (one composition); ``mask`` is ignored.
        """
        state = self._device_state()
        settings = self.settings
        cell_j = None if cell is None else jnp.asarray(np.asarray(cell, float))
        shifts = tuple(tuple(int(v) for v in row) for row in image_shifts(
            None if cell is None else np.asarray(cell, float), settings.r_cut))
        species = jnp.asarray(self._records[0]["species"]) if self._records and \
            self._records[0]["species"] is not None else None

        def variance(positions, mask=None):
            env = _environments_static(positions, cell_j, species, settings, shifts)
            return _energy_variance(env, state, settings)

        return variance

    def save(self, path) -> None:
        """Write the training structures, settings and hyperparameters to an .npz (:meth:`load` refits)."""
        import json

        from jaxiap.runfolder import savez

        meta = {"settings": dataclasses.asdict(self.settings), "hyperparameters": self.hyperparameters._asdict(),
                "n": len(self._records),
                "baseline": None if self.baseline is None else prior_to_dict(self.baseline)}
        arrays = {"meta": np.array(json.dumps(meta))}
        for k, rec in enumerate(self._records):
            for name, val in rec.items():
                if val is not None:
                    arrays[f"{k}_{name}"] = np.asarray(val)
        savez(path, **arrays)

    @classmethod
    def load(cls, path) -> "GaussianProcess":
        """A GaussianProcess rebuilt from :meth:`save`'s file (structures re-added, then refit)."""
        import json

        from jaxiap.runfolder import read_npz

        with read_npz(path, "Gaussian-process file") as z:
            meta = json.loads(str(z["meta"]))
            records = [{name: np.asarray(z[f"{k}_{name}"]) if f"{k}_{name}" in z else None
                        for name in ("positions", "cell", "species", "forces", "atoms", "energy", "stress")}
                       for k in range(meta["n"])]
        baseline = meta.get("baseline")
        gp = cls(GPSettings(**meta["settings"]), GPHyperparameters(**meta["hyperparameters"]),
                 None if baseline is None else prior_from_dict(baseline))
        for rec in records:
            energy = rec["energy"]
            gp.add(rec["positions"], rec["cell"], rec["species"], forces=rec["forces"], atoms=rec["atoms"],
                   energy=None if energy is None else float(energy), stress=rec["stress"])
        if gp.n_rows:
            gp.refit()
        return gp

    def potential(self, cell=None) -> "GPPotential":
        """The posterior mean as a :class:`GPPotential` (frozen snapshot) for structures in ``cell``."""
        state = self._device_state()
        cell_np = None if cell is None else np.asarray(cell, float)
        shifts = tuple(tuple(int(v) for v in row) for row in image_shifts(cell_np, self.settings.r_cut))
        return GPPotential(state, None if cell_np is None else jnp.asarray(cell_np), self.settings, shifts,
                           self.baseline)


def _cholesky(k: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.cholesky(0.5 * (k + k.T))
    except np.linalg.LinAlgError:
        raise JaxiapInputError(
            "GaussianProcess: K + noise is not positive definite (duplicate environments with a tiny noise?); "
            "raise the noise hyperparameters") from None


class GPState(NamedTuple):
    """Device arrays of a factorised GP (padded to capacities)."""

    envs: Environments        # (M,) training environments
    phi: jnp.ndarray          # (2, R, M, Q) design rows times the signal variances
    chol: jnp.ndarray         # (R, R) Cholesky factor of K + noise (identity on padded rows)
    weights: jnp.ndarray      # (2, M, Q) sig_c^2 sum_r Phi_c[r] alpha_r
    length_scales: jnp.ndarray  # (2,)
    signal: jnp.ndarray       # (2,) sig2^2, sig3^2


def _predict(env: Environments, state: GPState, settings: GPSettings, energy_std: bool, stress: bool, volume):
    n = env.vectors.shape[0]
    l2, l3 = state.length_scales[0], state.length_scales[1]
    n_p_q = settings.n_p if stress else 3
    blocks = unit_blocks(env, state.envs, settings, l2, l3, n_p_query=n_p_q)     # (2, N, M, P, Q)
    bw = jnp.asarray(ENERGY_WEIGHTS, blocks.dtype)
    # query rows: forces (N, 3), energy, stress; kstar = sum_c B_c Phi_c^T (signal folded into phi)
    k_f = -jnp.einsum("cnmaq,crmq->nar", blocks[:, :, :, 1:4], state.phi)   # F = -dS/d(delta)
    k_e = jnp.einsum("c,cnmq,crmq->r", bw, blocks[:, :, :, 0], state.phi)
    mean_f = -jnp.einsum("cnmaq,cmq->na", blocks[:, :, :, 1:4], state.weights)
    mean_e = jnp.einsum("c,cnmq,cmq->", bw, blocks[:, :, :, 0], state.weights)
    solve = lambda k: jax.scipy.linalg.solve_triangular(state.chol, k, lower=True)  # noqa: E731
    v_f = solve(k_f.reshape(n * 3, -1).T)
    bw2 = state.signal * bw**2
    if energy_std or stress:  # one N x N block set gives the force, energy and stress priors
        bqq = unit_blocks(env, env, settings, l2, l3, n_p_query=n_p_q)                     # (2, N, N, P, Q)
        diag = jnp.diagonal(bqq, axis1=1, axis2=2)                                          # (2, P, Q, N)
        prior_f = jnp.einsum("c,caan->na", state.signal, diag[:, 1:4, 1:4])
    else:
        def self_block(*fields):
            e = Environments(*fields, env.overflow)
            return unit_blocks(e, e, settings, l2, l3, n_p_query=3)[:, 0, 0]

        self_b = jax.vmap(self_block)(*[a[:, None] for a in env[:-1]])                             # (N, 2, 4, 4)
        prior_f = jnp.einsum("c,ncaa->na", state.signal, self_b[:, :, 1:4, 1:4])
    var_f = prior_f - jnp.sum(v_f**2, axis=0).reshape(n, 3)
    out = {"energy": mean_e, "forces": mean_f, "forces_std": jnp.sqrt(jnp.maximum(var_f, 0.0))}
    if energy_std:
        prior_e = jnp.einsum("c,cnm->", bw2, bqq[:, :, :, 0, 0])
        v_e = solve(k_e)
        out["energy_std"] = jnp.sqrt(jnp.maximum(prior_e - jnp.sum(v_e**2), 0.0))
    if stress:
        proj = _voigt_projection(blocks.dtype)                                                   # (6, 9)
        k_s = jnp.einsum("c,cnmeq,ve,crmq->vr", bw, blocks[:, :, :, 4:13], proj, state.phi) / volume
        out["stress"] = jnp.einsum("c,cnmeq,ve,cmq->v", bw, blocks[:, :, :, 4:13], proj, state.weights) / volume
        prior_s = jnp.einsum("c,cnmef,ve,vf->v", bw2, bqq[:, :, :, 4:13, 4:13], proj, proj) / volume**2
        v_s = solve(k_s.T)
        out["stress_std"] = jnp.sqrt(jnp.maximum(prior_s - jnp.sum(v_s**2, axis=0), 0.0))
    return out


def _energy_variance(env: Environments, state: GPState, settings: GPSettings):
    """Posterior variance of the total energy of one structure (differentiable in its positions)."""
    l2, l3 = state.length_scales[0], state.length_scales[1]
    bw = jnp.asarray(ENERGY_WEIGHTS, env.vectors.dtype)
    blocks = unit_blocks(env, state.envs, settings, l2, l3, n_p_query=0)[:, :, :, 0]           # (2, N, M, Q)
    k_e = jnp.einsum("c,cnmq,crmq->r", bw, blocks, state.phi)
    bqq = unit_blocks(env, env, settings, l2, l3, n_p_query=0)[..., 0, 0]
    prior = jnp.einsum("c,c,c,cnm->", state.signal, bw, bw, bqq)
    v = jax.scipy.linalg.solve_triangular(state.chol, k_e, lower=True)
    return jnp.maximum(prior - jnp.sum(v**2), 0.0)


def _voigt_projection(dtype):
    p = np.zeros((6, 9))
    for v, (a, b) in enumerate(VOIGT):
        p[v, 3 * a + b] += 0.5
        p[v, 3 * b + a] += 0.5
    return jnp.asarray(p, dtype)


_predict_jit = jax.jit(_predict, static_argnames=("settings", "energy_std", "stress"))


def _baseline_energy(positions, cell, species, settings: GPSettings, shifts: tuple, baseline: CoreRepulsion):
    env = _environments_static(positions, cell, species, settings, shifts)
    return baseline.environment_energy(env.vectors, env.mask, env.species, env.center_species)


def _baseline(positions, cell, species, settings: GPSettings, shifts: tuple, baseline: CoreRepulsion, stress: bool):
    """Energy, forces (-dE/dR) and, with ``stress`` (a cell needed), the Voigt stress (1/V) dE/d(strain)."""
    def energy(x, strain):
        m = jnp.eye(3, dtype=x.dtype) + strain
        return _baseline_energy(x @ m, None if cell is None else cell @ m, species, settings, shifts, baseline)

    zero = jnp.zeros((3, 3), positions.dtype)
    e, (g_x, g_s) = jax.value_and_grad(energy, argnums=(0, 1))(positions, zero)
    out = {"energy": e, "forces": -g_x}
    if stress:
        sym = 0.5 * (g_s + g_s.T) / jnp.abs(jnp.linalg.det(cell))
        out["stress"] = jnp.stack([sym[a, b] for a, b in VOIGT])
    return out


_baseline_jit = jax.jit(_baseline, static_argnames=("settings", "shifts", "baseline", "stress"))


class GPPotential(Potential):
    """Posterior-mean energy of a :class:`GaussianProcess` as a Potential (forces by autodiff).

    ``energy(positions, box=None, species=None)``: the cell defaults to the
    one given to :meth:`GaussianProcess.potential` (its image offsets are
    fixed at that point); ``species`` are the atomic numbers used in training.
    """

    state: GPState
    cell: jnp.ndarray | None
    settings: GPSettings = eqx.field(static=True)
    shifts: tuple = eqx.field(static=True)
    baseline: CoreRepulsion | PairPrior | None = eqx.field(static=True, default=None)

    @property
    def cutoff(self):
        return self.settings.r_cut

    def parameter_spec(self):
        """The dual weights ``state.weights``: the mean energy is linear in them (like a linear potential's
        coefficients), so MD programs that map over parameter samples take a GPPotential unchanged."""
        spec = jax.tree_util.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda p: p.state.weights, spec, replace=True)

    def _envs(self, positions, box, species):
        box = self.cell if box is None else box
        return _environments_static(positions, box, species, self.settings, self.shifts)

    def energy(self, positions, box=None, species=None, **kwargs):
        env = self._envs(positions, box, species)
        l2, l3 = self.state.length_scales[0], self.state.length_scales[1]
        blocks = unit_blocks(env, self.state.envs, self.settings, l2, l3, n_p_query=0)[:, :, :, 0]   # (2, N, M, Q)
        bw = jnp.asarray(ENERGY_WEIGHTS, blocks.dtype)
        e = jnp.einsum("c,cnmq,cmq->", bw, blocks, self.state.weights)
        if self.baseline is not None:
            e = e + self.baseline.environment_energy(env.vectors, env.mask, env.species, env.center_species)
        return e

    def mean_forces(self, positions, box=None, species=None):
        """Posterior-mean forces (N, 3) from the force rows (equal to -dE/dR of :meth:`energy`)."""
        env = self._envs(positions, box, species)
        l2, l3 = self.state.length_scales[0], self.state.length_scales[1]
        blocks = unit_blocks(env, self.state.envs, self.settings, l2, l3, n_p_query=3)
        forces = -jnp.einsum("cnmaq,cmq->na", blocks[:, :, :, 1:4], self.state.weights)
        if self.baseline is not None:
            box = self.cell if box is None else box
            forces = forces - jax.grad(_baseline_energy)(positions, box, species, self.settings, self.shifts,
                                                          self.baseline)
        return forces
