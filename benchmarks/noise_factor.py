"""Held-out check of calibrate.NOISE_FACTOR: rerun the default grid under perturbations that the
calibration did not use, and see how far they move each value relative to the measured noise.

A value's ratio is |held-out - reference| / noise (its calibrated noise, floored as calibrate
floors it). NOISE_FACTOR must sit above the ratios seen, so a change of the same kind (a new
release's rounding) is called equivalent.

    python benchmarks/noise_factor.py [--perturbations threads3,ulp5,grad5] [--reports DIR ...] [-n 2]

Reports go to reports/heldout/<perturbation>/ (reused when present); ``--reports`` adds finished
report folders of other rounding-size changes (e.g. benchmarks/sensitivity.py's linear_split_k).
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


def leave_one_out(folder: Path) -> pd.DataFrame:
    """From a calibration's own sessions (reports/calibration/<grid>/): each perturbation held
    out in turn, its deviation over the noise the other perturbations measured."""
    ref = report.read(folder / "reference" / report.RUNS).set_index("run_id")
    sessions = {d.name: report.read(d / report.RUNS).set_index("run_id") for d in sorted(folder.iterdir())
                if d.is_dir() and d.name != "reference" and (d / report.RUNS).exists()}
    rows = []
    for held, runs in sessions.items():
        others = [r for n, r in sessions.items() if n != held]
        for run_id in runs.index:
            for m in calibrate.METRICS:
                r0 = ref.loc[run_id]
                noise = max(calibrate.noise_of(r0[m], [o.loc[run_id, m] for o in others]), calibrate.resolution(r0, m),
                            calibrate.ULP_FLOOR * abs(r0[m]) / calibrate.NOISE_FACTOR)
                dev = abs(runs.loc[run_id, m] - r0[m])
                rows.append(dict(held_out=held, value=m, ratio=dev / noise if noise else 0.0,
                                 beyond=dev > calibrate.tolerance(r0[m], noise)))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perturbations", default="threads3,ulp5,grad5")
    parser.add_argument("--reports", nargs="*", default=[], help="more report folders (seed 0 of the default grid)")
    parser.add_argument("-n", default="2")
    args = parser.parse_args()
    calibration = ROOT / "reports" / "calibration" / "default"
    if calibration.is_dir():
        t = leave_one_out(calibration)
        print("leave one out (the calibration's own perturbations, each judged by the noise the others measured):")
        print("| held out | values | ratio median | ratio 99th pct | ratio max | beyond tolerance |\n|---|---|---|---|---|---|")
        for held, g in t.groupby("held_out"):
            print(f"| {held} | {len(g)} | {g['ratio'].median():.2f} | {np.percentile(g['ratio'], 99):.2f} | "
                  f"{g['ratio'].max():.2f} | {int(g['beyond'].sum())} |")
        print()
    tol = report.read(baseline.directory("default") / calibrate.TOLERANCES, required=["run_id"])
    print(f"| held-out perturbation | values | ratio median | ratio 99th pct | ratio max | beyond tolerance "
          f"(NOISE_FACTOR {calibrate.NOISE_FACTOR:g}) |\n|---|---|---|---|---|---|")
    sources = [(n, lambda n=n: run(n, ROOT / "reports" / "heldout" / n, args.n)) for n in args.perturbations.split(",") if n]
    sources += [(Path(d).name, lambda d=d: report.read(Path(d) / report.RUNS)) for d in args.reports]
    for name, load in sources:
        t = ratios(tol, load())
        print(f"| {name} | {len(t)} | {t['ratio'].median():.2f} | {np.percentile(t['ratio'], 99):.2f} | "
              f"{t['ratio'].max():.2f} | {int(t['beyond'].sum())} |")


if __name__ == "__main__":
    main()
