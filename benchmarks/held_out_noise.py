"""Does the calibrated noise model hold for rounding it never saw? Each calibration perturbation is
held out in turn: the noise is calibrated from the other perturbations (calibrate.tolerances and
calibrate.envelope, as ``diagnostics calibrate`` does), and the held-out reruns are compared with
the reference as a candidate would be (compare.compare_reports). Every flag is a false alarm:
the held-out runs differ from the reference only in rounding.

    python benchmarks/held_out_noise.py [--calibration reports/calibration/default]

Reads a finished calibration's sessions (reference/ and one folder per perturbation); trains
nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from diagnostics import report
from diagnostics.judge import calibrate, compare, verdicts


def held_out(work: Path, names: list[str], out: str) -> pd.DataFrame:
    """compare.csv of the held-out perturbation ``out`` against the reference, on the perturbed
    seeds, with the noise calibrated from the others."""
    ref_runs, ref_steps = report.read(work / "reference" / report.RUNS), report.read(work / "reference" / report.STEPS)
    others = [n for n in names if n != out]
    runs = {n: report.read(work / n / report.RUNS) for n in others}
    steps = {n: report.read(work / n / report.STEPS) for n in others}
    tol = calibrate.tolerances(ref_runs, runs, compare.CONFIG)
    env = calibrate.envelope(ref_steps, steps, ref_runs, compare.CONFIG)
    # an ulp perturbation moves the initial weights by design: its runs are paired with the
    # reference's seed all the same (init_sha256 would otherwise, rightly, unpair them)
    cand = report.read(work / out / report.RUNS).drop(columns=["init_sha256"], errors="ignore")
    base = ref_runs[ref_runs["seed"].isin(set(cand["seed"]))]
    return compare.compare_reports(base, cand, ref_steps, report.read(work / out / report.STEPS), tolerances=tol,
                                   envelope=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", default="reports/calibration/default", help="a calibration's work folder")
    args = parser.parse_args()
    work = Path(args.calibration)
    names = sorted(p.name for p in work.iterdir() if p.is_dir() and p.name != "reference" and (p / report.RUNS).exists())
    print(f"{work}: perturbations {', '.join(names)}; each held out, noise from the others\n")
    print("| held out | configs | flagged beyond noise | verdicts | mde, median (max) |")
    print("|---|---|---|---|---|")
    for out in names:
        t = held_out(work, names, out)
        flagged = t[t["verdict"].isin(verdicts.BEYOND_NOISE)]
        counts = ", ".join(f"{n} {v}" for v, n in t["verdict"].value_counts().items())
        print(f"| {out} | {len(t)} | {len(flagged)} | {counts} | {t['mde'].median():.2%} ({t['mde'].max():.2%}) |",
              flush=True)
        for r in flagged.to_dict("records"):
            print(f"    {r['run_id']}: {r['verdict']}: {r['detail']}")


if __name__ == "__main__":
    main()
