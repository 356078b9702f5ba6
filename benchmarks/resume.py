"""A grid killed part way, then run again: with --resume against from scratch, in one invocation.

    python benchmarks/resume.py [--kill-after 3] [-n 1]     # docs/measured/index.md "Resuming"

The grid is gpt x AdamW x the five schedules x both warmups (10 runs of 200 steps, CPU). The
first session is killed with SIGKILL (as a preempted CI or Slurm job is) once ``--kill-after``
runs have finished; then the same command with ``--resume`` (what it kept, what it trained, its
wall time) and, for comparison, the same command into a fresh directory (everything trained).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
GRID = ["--grid", "default", "--models", "gpt", "--optimizers", "adamw", "--devices", "cpu", "--allow-no-baseline",
        "--quiet"]


def command(report_dir: Path, workers: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "diagnostics", "run", *GRID, "-n", workers, "--report-dir", str(report_dir), *extra]


def finished(report_dir: Path) -> int:
    path = report_dir / "runs.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-after", type=int, default=3, help="finished runs before the SIGKILL")
    ap.add_argument("-n", dest="workers", default="1", help="xdist workers")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "killed"
        t0 = time.perf_counter()
        first = subprocess.Popen(command(d, args.workers), cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        while finished(d) < args.kill_after and first.poll() is None:
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        killed_at, kept = time.perf_counter() - t0, finished(d)
        refused_s, refused = timed(command(d, args.workers))
        resumed_s, resumed = timed(command(d, args.workers, "--resume"))
        fresh_s, fresh = timed(command(Path(tmp) / "fresh", args.workers))
        runs = pd.read_csv(d / "runs.csv")
        line = next((ln for ln in resumed.stdout.splitlines() if ln.startswith("resumed:")), "")
    print(f"killed after {kept} finished runs ({killed_at:.0f} s in)")
    print(f"same command without --resume: exit {refused.returncode}: {refused.stderr.strip()}")
    print(f"with --resume: exit {resumed.returncode}, {resumed_s:.1f} s, {len(runs)} runs in the report; {line}")
    print(f"from scratch: exit {fresh.returncode}, {fresh_s:.1f} s; resumed / from scratch = {resumed_s / fresh_s:.2f}")


if __name__ == "__main__":
    main()
