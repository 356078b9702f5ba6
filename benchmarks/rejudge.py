"""Do the detection rules still give a report's runs the statuses they were given? Each run's
trace (steps.csv: step, loss, gradient norm, LR) is replayed through ``detect.classify`` and the
status compared with the one in runs.csv (decided live by the rules of the code that trained it).

    python benchmarks/rejudge.py [REPORT_DIR ...]    # default: the default baseline's calibration reference

The default grid's baseline (reports/baselines/default) holds no traces; its calibration's reference
session (``diagnostics calibrate --grid default --seeds 0,1,2,3,4``) trained the same runs and keeps
them under reports/calibration/default/reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diagnostics import detect, report


def rejudge(report_dir: Path) -> list[tuple[str, str, str, str]]:
    """(run_id, status in runs.csv, status now, reason now) for every run whose status moved."""
    runs = report.read(report_dir / report.RUNS)
    steps = report.read(report_dir / report.STEPS)
    floor = dict(zip(runs["run_id"], runs["loss_floor"]))
    status = dict(zip(runs["run_id"], runs["status"]))
    moved = []
    for run_id, trace in steps.sort_values(["run_id", "step"]).groupby("run_id"):
        v, _ = detect.classify(trace[["step", "loss", "grad_norm", "lr"]], loss_floor=floor[run_id])
        if v.status != status[run_id]:
            moved.append((run_id, status[run_id], v.status, v.status_reason))
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="*", default=["reports/calibration/default/reference"])
    args = parser.parse_args()
    for d in map(Path, args.reports):
        n = report.read(d / report.RUNS)["run_id"].nunique()
        moved = rejudge(d)
        print(f"{d}: {n} runs re-judged from their traces, {n - len(moved)} keep their status, {len(moved)} moved")
        for run_id, was, now, why in moved:
            print(f"  {run_id}: {was} -> {now} ({why})")


if __name__ == "__main__":
    main()
