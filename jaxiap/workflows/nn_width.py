"""Uncertainty chooses model complexity: network width by last-layer evidence or held-out NLL.

For each hidden width w (one hidden layer pair (w, w)), an MSE-trained
network gets a last-layer Bayesian linear regression (``fit_nn("last-layer")``,
noise and prior scale by type-II maximum likelihood). Two selection scores
need no test data:

- the log evidence log p(y_train | w) of the last-layer model, per training
  row (higher is better);
- the Gaussian NLL of the validation forces under the last-layer predictive
  N(mean, std^2 + sigma_force^2) (lower is better).

They are shown against the test force RMSE of the same models, the curve
that the choice should follow (``bench/nn_width_selection.py``, figure
``bench/figures/nn_width_selection.png``).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxiap.data import Dataset


def width_scan(descriptor, train: Dataset, validation: Dataset, test: Dataset, widths, *, seed: int = 0,
               settings=None, progress: bool = False) -> dict:
    """Scores of each width: ``widths``, ``log_evidence_per_row``, ``validation_nll``, ``test_rmse`` (forces),
    ``train_seconds``, and the widths each score picks (``picked_by_evidence``, ``picked_by_nll``,
    ``best_test``)."""
    from jaxiap.inference.nn_train import TrainSettings
    from jaxiap.uq.nn_uq import fit_nn
    from jaxiap.uq.metrics import gaussian_nll

    settings = settings or TrainSettings()
    out = {k: [] for k in ("widths", "log_evidence_per_row", "validation_nll", "test_rmse", "train_seconds")}
    n_rows = len(train) * (1 + 3 * int(np.asarray(train.structures.mask).sum(axis=1).max()))
    for w in widths:
        t0 = time.perf_counter()
        post, hist = fit_nn("last-layer", descriptor, train, validation, key=jax.random.key(seed + int(w)),
                            hidden=(int(w), int(w)), settings=settings, progress=progress)
        seconds = time.perf_counter() - t0
        noise = float(post.extra["posterior"].noise_var)
        pv = post.predict_structures(validation.structures)
        vm = np.asarray(validation.structures.mask)
        std = np.sqrt(np.asarray(pv.forces_std)[vm] ** 2 + noise)
        nll = gaussian_nll(np.asarray(pv.forces)[vm], std, np.asarray(validation.forces)[vm])
        pt = post.predict_structures(test.structures)
        tm = np.asarray(test.structures.mask)
        rmse = float(np.sqrt(np.mean((np.asarray(pt.forces)[tm] - np.asarray(test.forces)[tm]) ** 2)))
        out["widths"].append(int(w))
        out["log_evidence_per_row"].append(float(hist["log_evidence"]) / n_rows)
        out["validation_nll"].append(float(nll))
        out["test_rmse"].append(rmse)
        out["train_seconds"].append(seconds)
    w = out["widths"]
    out["picked_by_evidence"] = w[int(np.argmax(out["log_evidence_per_row"]))]
    out["picked_by_nll"] = w[int(np.argmin(out["validation_nll"]))]
    out["best_test"] = w[int(np.argmin(out["test_rmse"]))]
    return out
