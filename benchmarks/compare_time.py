"""Wall time of `diagnostics compare` on two full default-grid reports (60 configs, 200 steps
each), as users run it (a subprocess, imports included) and of the comparison alone.

    python benchmarks/compare_time.py BASELINE_DIR CANDIDATE_DIR [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diagnostics import report
from diagnostics.judge import compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline_dir", type=Path)
    ap.add_argument("candidate_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    whole, alone = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "diagnostics", "compare", str(args.baseline_dir),
                            str(args.candidate_dir), "--out", out], capture_output=True, check=False)
            whole.append(time.perf_counter() - t0)
        runs = [report.read(d / report.RUNS) for d in (args.baseline_dir, args.candidate_dir)]
        steps = [report.read(d / report.STEPS) if (d / report.STEPS).exists() else None
                 for d in (args.baseline_dir, args.candidate_dir)]
        t0 = time.perf_counter()
        table = compare.compare_reports(*runs, *steps)
        alone.append(time.perf_counter() - t0)
    print(f"{len(table)} configs, {args.repeats} repeats (median): `diagnostics compare` "
          f"{float(np.median(whole)):.2f} s end to end, compare_reports {float(np.median(alone)):.2f} s")


if __name__ == "__main__":
    main()
