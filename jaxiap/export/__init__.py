"""Exports of fitted jaxiap potentials to other codes (docs/lammps.md).

:mod:`jaxiap.export.lammps`: a one-species radial linear potential as a
LAMMPS ``pair_style table`` file, and a small LAMMPS runner that checks it.
"""

from jaxiap.export.lammps import PairTable, lammps_energy_forces, read_pair_table, write_pair_table

__all__ = ["PairTable", "write_pair_table", "read_pair_table", "lammps_energy_forces"]
