"""Wall time of the grids as users run them (`python -m diagnostics run ...`), side by side in
one invocation so the ratios are comparable on a noisy machine.

    python benchmarks/grid_time.py                 # default grid with -n 2, smoke grid with -n 0
    python benchmarks/grid_time.py --also-serial   # plus the default grid with -n 0

Prints a table (wall seconds, runs, runs/minute, statuses) for the README.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def time_grid(grid: str, workers: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "diagnostics", "run", "--grid", grid, "--devices", "cpu", "-n", workers,
               "--report-dir", d, "--quiet", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        runs = pd.read_csv(Path(d) / "runs.csv")
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(runs["status"].value_counts().items()))
    return dict(grid=grid, workers=workers, exit=proc.returncode, runs=len(runs), wall_s=round(wall, 1),
                runs_per_min=round(60 * len(runs) / wall, 1), train_s_sum=round(runs["runtime_s"].sum(), 1),
                statuses=statuses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--also-serial", action="store_true", help="also time the default grid without xdist")
    args = ap.parse_args()
    cases = [("smoke", "0"), ("default", "2")] + ([("default", "0")] if args.also_serial else [])
    rows = [time_grid(g, n, []) for g, n in cases]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
