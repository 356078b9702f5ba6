"""Every default location and every report file name, in one place.

Folders a session writes are relative to the working directory (where the command runs); the
committed baselines and the release environments belong to the checkout this package comes from
(an editable install), so every command finds the same ones wherever it runs.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # this package (its frames, the built-in models' included)
CHECKOUT = PACKAGE.parent  # the checkout holding this package

# default folders
REPORT_DIR = Path("reports/latest")  # diagnostics run --report-dir
DATA_DIR = Path("reports/data")  # embedded datasets, written once (--data-dir)
CALIBRATION_DIR = Path("reports/calibration")  # calibrate --work-dir: its sessions, a folder per grid
BASELINES = Path("reports/baselines")  # a folder per grid (baseline.root: the checkout's, else here)
RELEASE_ENVS_DIR = CHECKOUT / ".release-envs"  # release / bisect / changelog: one environment per torch

# a report folder (the CSV contract: report.SCHEMAS)
RUNS, STEPS, EVENTS, ENV = "runs.csv", "steps.csv", "events.csv", "env.csv"
REPRO, SEEDS = "repro.csv", "seeds.csv"  # reproducibility suite; per-seed spread of a config
STABILITY = "stability.csv"  # stability sweep
TRACE = "trace.csv"  # diagnostics trace: the ops of each config family's first steps
EXPLAIN = "explain.csv"  # diagnostics explain: where two traces part, op by op
EXPLAIN_PAGE = "explain.html"  # the same, as a page (roots, where they ran, their reproducers)
PAGE = "index.html"  # diagnostics report
# a baseline folder, beside its runs.csv
TOLERANCES, ENVELOPE = "tolerances.csv", "envelope.csv"
# comparisons and the release commands
COMPARE = "compare.csv"
BISECT = "bisect.csv"
CHANGELOG, CHANGELOG_MD, CHANGELOG_FIGURE = "changelog.csv", "changelog.md", "changelog.png"
# beside a changelog, written by hand: what torch's pull requests and release notes say caused a change
CITATIONS = "citations.csv"
FIRST_CHANGES = "first-changes.csv"  # beside a changelog: each config's first change, from its transitions
