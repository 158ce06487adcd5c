"""Generating new training structures by uncertainty-biased sampling (docs/biased-sampling.md).

- ``uncertainty``: energy variance / std of a linear posterior, committee energies, UDD's sig_E^2;
- ``udd``: uncertainty-driven dynamics (Kulichenko et al. 2023);
- ``hal``: hyperactive learning (van der Oord et al. 2023);
- ``biased_md``: block Langevin MD on a biased energy with a stop rule and an adapt hook;
- ``metad``: well-tempered metadynamics along any differentiable CV (e.g. the GMM uncertainty);
- ``attacks``: adversarial attacks on the uncertainty (Schwalbe-Koda et al. 2021).
"""

from jaxiap.active.generate.attacks import AttackResult, adversarial_attack, partition_log_z, random_displacements
from jaxiap.active.generate.biased_md import BiasedRun, run_biased_langevin
from jaxiap.active.generate.hal import (
    hal_adapt,
    hal_bias_forces,
    hal_components,
    hal_energy_fn,
    hal_force_uncertainty,
    hal_tau,
)
from jaxiap.active.generate.metad import MetadResult, metad_bias, metad_energy_fn, run_metad
from jaxiap.active.generate.udd import (
    calibrate_udd_B,
    udd_bias,
    udd_bias_energy_fn,
    udd_components,
    udd_energy_fn,
    udd_force_ratio,
    udd_rho,
    udd_stop,
)
from jaxiap.active.generate.uncertainty import (
    committee_energies,
    committee_std,
    linear_energy_std,
    linear_energy_variance,
    posterior_members,
    udd_sigma2,
)

__all__ = [
    "linear_energy_variance", "linear_energy_std", "committee_energies", "committee_std", "udd_sigma2",
    "posterior_members",
    "udd_bias", "udd_components", "udd_energy_fn", "udd_bias_energy_fn", "udd_rho", "udd_stop", "udd_force_ratio",
    "calibrate_udd_B",
    "hal_components", "hal_energy_fn", "hal_bias_forces", "hal_tau", "hal_adapt", "hal_force_uncertainty",
    "BiasedRun", "run_biased_langevin",
    "MetadResult", "metad_bias", "metad_energy_fn", "run_metad",
    "AttackResult", "adversarial_attack", "partition_log_z", "random_displacements",
]
