"""Inference benchmarks of the Bayesian-inference issue, in one command.

(a) NUTS through ``jaxiap.inference.mcmc.run_nuts`` (one factor changed per
    row) against a Haario adaptive-Metropolis sampler of the kind FitSNAP
    uses, min ESS per evaluation and per second on the LJ13 linear-potential
    posterior (``bench/inference_nuts.py``);
(b) streaming BLR throughput (rows/s) and peak memory at 1e5, 1e6 and 1e7
    design rows against the same normal equations in numpy and, separately,
    in-memory SVD least squares (``bench/inference_streaming.py``);
(c) streaming at scale: 1e7 rows at K = 100 and 2e5 rows at K = 1000 (``--full``
    for 1e7 there too, several minutes per engine on 2 cores), rows/s, peak
    memory and the fraction of the machine's float64 matmul rate measured in
    the same run, against the numpy normal equations
    (``bench/inference_streaming.py --scale``).

Usage: ``python bench/inference.py [nuts|streaming|scale|all] [--quick] [--full]``.
Each part prints its table with the peers' figures from the same run; results
are recorded in bench/RESULTS.md.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = {"nuts": ["inference_nuts.py"],
         "streaming": ["inference_streaming.py", "--sizes", "1e5", "1e6", "1e7"],
         "scale": ["inference_streaming.py", "--scale"]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    full = "--full" in argv
    argv = [a for a in argv if a not in ("--quick", "--full")]
    which = (argv or ["all"])[0]
    if which not in (*PARTS, "all"):
        print(f"usage: python bench/inference.py [{'|'.join(PARTS)}|all] [--quick] [--full]; got {which!r}",
              file=sys.stderr)
        return 2
    rc = 0
    for name, cmd in PARTS.items():
        if which in (name, "all"):
            print(f"== {name} ==", flush=True)
            extra = (["--quick"] if quick else []) + (["--full"] if full and name == "scale" else [])
            if quick and name == "streaming":
                cmd = cmd[:1]  # --quick picks its own sizes
            rc |= subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:], *extra])
    return rc


if __name__ == "__main__":
    sys.exit(main())
