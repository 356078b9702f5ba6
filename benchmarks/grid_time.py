"""Wall time of the grids as users run them (`python -m diagnostics run ...`), side by side in
one invocation so the ratios are comparable on a noisy machine.

    python benchmarks/grid_time.py                 # default grid with -n 2, smoke grid with -n 0
    python benchmarks/grid_time.py --also-serial   # plus the default grid with -n 0
    python benchmarks/grid_time.py --judged        # default grid, -n 2: judged against its baseline vs not, twice

Prints a table (wall seconds, runs, runs/minute, statuses) for the docs (docs/measured/index.md).
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


def judged_vs_unjudged(rounds: int = 2) -> None:
    """The default grid with -n 2, judged against its committed baseline and not judged (an
    empty --baseline, --allow-no-baseline), alternating; the judged/unjudged ratio of each round."""
    rows = []
    with tempfile.TemporaryDirectory() as empty:
        for r in range(rounds):
            judged = time_grid("default", "2", [])
            unjudged = time_grid("default", "2", ["--baseline", empty, "--allow-no-baseline"])
            rows += [dict(judged, round=r, judged=True), dict(unjudged, round=r, judged=False)]
            print(f"round {r}: judged {judged['wall_s']} s (exit {judged['exit']}), unjudged {unjudged['wall_s']} s: "
                  f"ratio {judged['wall_s'] / unjudged['wall_s']:.3f}", flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--also-serial", action="store_true", help="also time the default grid without xdist")
    ap.add_argument("--judged", action="store_true", help="the cost of judging: default grid judged vs not, twice")
    args = ap.parse_args()
    if args.judged:
        judged_vs_unjudged()
        return
    cases = [("smoke", "0"), ("default", "2")] + ([("default", "0")] if args.also_serial else [])
    rows = [time_grid(g, n, []) for g, n in cases]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
