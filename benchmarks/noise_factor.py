"""Held-out check of calibrate.NOISE_FACTOR: rerun the default grid under perturbations that the
calibration did not use, and see how far they move each value relative to the measured noise.

A value's ratio is |held-out - reference| / noise (its calibrated noise, floored as calibrate
floors it). NOISE_FACTOR must sit above the ratios seen, so a change of the same kind (a new
release's rounding) is called equivalent.

    python benchmarks/noise_factor.py [--perturbations threads3,ulp5,grad5] [-n 2]

Reports go to reports/heldout/<perturbation>/ (reused when present).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics import baseline, calibrate, report

ROOT = Path(__file__).resolve().parent.parent


def run(name: str, out: Path, workers: str) -> pd.DataFrame:
    if not (out / report.RUNS).exists():
        subprocess.run([sys.executable, "-m", "diagnostics", "run", "--grid", "default", "--devices", "cpu",
                        "--seeds", "0", "--report-dir", str(out), "--quiet", "-n", workers, "--", "--perturb", name],
                       cwd=ROOT, check=True)
    return report.read(out / report.RUNS)


def ratios(tol: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per config and value: |held-out - reference|, the calibrated noise and tolerance."""
    rows = []
    by_id = runs.set_index("run_id")
    for t in tol.to_dict("records"):
        r = by_id.loc[t["run_id"]]
        for m in calibrate.METRICS:
            ref, noise, limit = t[f"{m}_reference"], t[f"{m}_noise"], t[f"{m}_tol"]
            floor_noise = max(noise, calibrate.ULP_FLOOR * abs(ref) / calibrate.NOISE_FACTOR)
            dev = abs(r[m] - ref)
            rows.append(dict(run_id=t["run_id"], value=m, deviation=dev, ratio=dev / floor_noise if floor_noise else 0,
                             beyond=dev > limit))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perturbations", default="threads3,ulp5,grad5")
    parser.add_argument("-n", default="2")
    args = parser.parse_args()
    tol = report.read(baseline.directory("default") / calibrate.TOLERANCES, required=["run_id"])
    print(f"| held-out perturbation | values | ratio median | ratio 99th pct | ratio max | beyond tolerance "
          f"(NOISE_FACTOR {calibrate.NOISE_FACTOR:g}) |\n|---|---|---|---|---|---|")
    for name in args.perturbations.split(","):
        t = ratios(tol, run(name, ROOT / "reports" / "heldout" / name, args.n))
        print(f"| {name} | {len(t)} | {t['ratio'].median():.2f} | {np.percentile(t['ratio'], 99):.2f} | "
              f"{t['ratio'].max():.2f} | {int(t['beyond'].sum())} |")


if __name__ == "__main__":
    main()
