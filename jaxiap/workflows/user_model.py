"""The fitted model of ``jaxiap fit``: its descriptor registry, ``model.json``, and loading a fit back.

A fit's run folder holds ``posterior.npz`` (any posterior, read by
:func:`jaxiap.inference.posterior.load_posterior`) and ``model.json``, which
says how to rebuild the linear basis E = c . B(x) the coefficients belong to:
the descriptor's registry name and options, the species (in index order),
whether per-species reference-energy columns follow, and K. ``jaxiap
predict`` and ``jaxiap sweep`` take the run folder, or the posterior file with
its ``model.json`` beside it (:func:`load_model`).

Descriptors are looked up by name in :data:`DESCRIPTORS` (name -> builder)
when a model is built: "radial"
(:class:`~jaxiap.descriptors.radial.RadialDescriptor`) and "ace"
(``jaxiap.descriptors.ace.ACEDescriptor``, docs/ace.md; its module is
imported by name only when a model uses it). A new descriptor is one builder
function and one line in the table.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import NamedTuple

from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.posterior import load_posterior
from jaxiap.potentials.linear import LinearBasis
from jaxiap.runfolder import read_json

#: the format of model.json
MODEL_FORMAT = 1
MODEL_JSON = "model.json"
POSTERIOR_NPZ = "posterior.npz"


def _radial(options: dict, n_species: int):
    return RadialDescriptor(RadialBasis(options["family"], int(options["n_basis"]), float(options["r_min"]),
                                        float(options["r_cut"])), int(n_species))


def _ace(options: dict, n_species: int):
    cls = descriptor_class("jaxiap.descriptors.ace", "ACEDescriptor", "ace")
    return cls(n_max=int(options["n_max"]), l_max=int(options["l_max"]), r_cut=float(options["r_cut"]),
               r_min=float(options["r_min"]), n_species=int(n_species), body_order=int(options["body_order"]),
               radial=options["family"])


#: descriptor name -> ``build(options, n_species) -> Descriptor``; options as model.json stores them
DESCRIPTORS = {"radial": _radial, "ace": _ace}
DESCRIPTOR_NAMES = tuple(DESCRIPTORS)


def descriptor_class(module: str, name: str, descriptor: str):
    """The class ``module.name``, imported now; a JaxiapInputError naming ``descriptor`` if it is missing."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise JaxiapInputError(f"descriptor {descriptor!r} needs {module}.{name}, which this jaxiap cannot import "
                               f"({type(exc).__name__}: {exc}); use --descriptor radial") from None


def descriptor_options(name: str, *, radial: str, n_basis: int, r_cut: float, r_min: float, l_max: int,
                       body_order: int) -> dict:
    """The options of descriptor ``name`` as model.json stores them (JSON-able)."""
    if name == "radial":
        return dict(family=radial, n_basis=int(n_basis), r_min=float(r_min), r_cut=float(r_cut))
    if name == "ace":
        return dict(family=radial, n_max=int(n_basis), l_max=int(l_max), body_order=int(body_order),
                    r_min=float(r_min), r_cut=float(r_cut))
    raise JaxiapInputError(f"descriptor {name!r} is unknown; choose one of {DESCRIPTOR_NAMES}")


def build_basis(descriptor: str, options: dict, species_names, species_reference: bool):
    """The :class:`~jaxiap.potentials.linear.LinearBasis` of a model description."""
    if descriptor not in DESCRIPTORS:
        raise JaxiapInputError(f"descriptor {descriptor!r} is unknown; choose one of {DESCRIPTOR_NAMES}")
    n_species = len(species_names)
    return LinearBasis(DESCRIPTORS[descriptor](options, n_species), n_species, species_reference=species_reference)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Model(NamedTuple):
    """A fit read back: basis, posterior, the model.json dict, the two files, and their fingerprint."""

    basis: object
    posterior: object
    info: dict
    posterior_path: Path
    model_path: Path
    fingerprint: str

    @property
    def species_names(self) -> tuple:
        return tuple(self.info["species_names"])

    @property
    def cutoff(self) -> float:
        return float(self.info["cutoff"])


def model_paths(path, option: str = "RUN_OR_POSTERIOR") -> tuple[Path, Path]:
    """(posterior.npz, model.json) of a fit's run folder or posterior file; JaxiapInputError if either is missing."""
    p = Path(path)
    if not p.exists():
        raise JaxiapInputError(f"{path}: no such file or folder; {option} is the run folder of jaxiap fit (or "
                               f"its {POSTERIOR_NPZ})")
    if p.is_dir():
        post, model = p / POSTERIOR_NPZ, p / MODEL_JSON
        if not post.is_file():
            raise JaxiapInputError(f"{path}: holds no {POSTERIOR_NPZ}; {option} is the run folder of jaxiap fit "
                                   "(or its posterior file)")
    else:
        post, model = p, p.parent / MODEL_JSON
    if not model.is_file():
        raise JaxiapInputError(f"{path}: no {MODEL_JSON} beside {post.name}; the posterior file alone does not "
                               "say which descriptor it belongs to: pass the run folder written by jaxiap fit")
    return post, model


def load_model(path, option: str = "RUN_OR_POSTERIOR") -> Model:
    """Read a fit back from its run folder (or posterior file with model.json beside it).

    Raises JaxiapInputError naming the file for a missing or unreadable file, a model.json of
    another format, an unknown descriptor, or a posterior whose size does not match the basis.
    """
    post_path, model_path = model_paths(path, option)
    info = read_json(model_path, "model description")
    need = ("jaxiap_model", "descriptor", "descriptor_options", "species_names", "species_reference", "n_features",
            "cutoff")
    if not isinstance(info, dict) or any(k not in info for k in need):
        missing = [k for k in need if not isinstance(info, dict) or k not in info]
        raise JaxiapInputError(f"{model_path}: not a jaxiap model description (missing {missing}); pass a run "
                               "folder written by jaxiap fit")
    if info["jaxiap_model"] != MODEL_FORMAT:
        raise JaxiapInputError(f"{model_path}: model format {info['jaxiap_model']} (this jaxiap reads "
                               f"{MODEL_FORMAT}); refit with this jaxiap")
    basis = build_basis(info["descriptor"], info["descriptor_options"], info["species_names"],
                        bool(info["species_reference"]))
    posterior = load_posterior(post_path)
    k = int(posterior.mean.shape[-1])
    if k != basis.n_features or k != int(info["n_features"]):
        raise JaxiapInputError(f"{post_path}: the posterior has {k} coefficients but {model_path} describes "
                               f"{basis.n_features} features; the two files are from different fits")
    fingerprint = hashlib.sha256((file_sha256(post_path) + file_sha256(model_path)).encode()).hexdigest()
    return Model(basis, posterior, info, post_path, model_path, fingerprint)
