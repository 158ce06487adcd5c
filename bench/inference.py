"""Inference benchmarks of the Bayesian-inference issue, in one command.

(a) NUTS minimum ESS per second on the LJ13 linear-potential posterior against
    a Haario adaptive-Metropolis sampler of the kind FitSNAP uses
    (``bench/inference_nuts.py``);
(b) streaming BLR throughput (rows/s) and peak memory at 1e5, 1e6 and 1e7
    design rows against in-memory numpy least squares
    (``bench/inference_streaming.py``).

Usage: ``python bench/inference.py [nuts|streaming|all]``. Each part prints its
table with the peer's figure from the same run; results are recorded in
bench/RESULTS.md.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = {"nuts": ["inference_nuts.py"],
         "streaming": ["inference_streaming.py", "--sizes", "1e5", "1e6", "1e7"]}


def main(argv=None) -> int:
    which = (argv or sys.argv[1:] or ["all"])[0]
    if which not in (*PARTS, "all"):
        print(f"usage: python bench/inference.py [{'|'.join(PARTS)}|all]; got {which!r}", file=sys.stderr)
        return 2
    rc = 0
    for name, cmd in PARTS.items():
        if which in (name, "all"):
            print(f"== {name} ==", flush=True)
            rc |= subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
    return rc


if __name__ == "__main__":
    sys.exit(main())
