"""The committed baseline: where it lives, what it holds, and how a session updates it.

A baseline is a folder, ``reports/baselines/<grid>/`` in the checkout by default (found from
the package's location, so every command finds it whatever directory it runs from):

- ``runs.csv``: the reference runs (the same schema as a report's), matched on
  ``compare.BASELINE_KEY``;
- ``tolerances.csv`` and ``envelope.csv``: the per-config tolerances ``diagnostics calibrate``
  measured (see calibrate.py); without them a config whose bits changed is ``unjudged``;
- ``init/``: the seed checkpoints the reference runs started from (``{model}-{size}-s{seed}.pt``,
  written by calibrate): every session of the grid trains from them, so a torch whose seeded
  initialisation differs is still paired with the baseline, and the change of its init is
  reported on its own (``compare``'s ``init_verdict``);
- ``repro.csv``: what the reproducibility checks found (a CUDA twice-same recorded identical is
  required to stay so);
- ``seeds.csv``: the seed study, where the calibration had several seeds.

``update`` writes a session's rows into it, and refuses a session whose runs errored or were
skipped unless forced: a baseline must describe runs that happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from diagnostics import paths, report
from diagnostics.detect import NO_RESULT
from diagnostics.judge import calibrate
from diagnostics.judge.compare import BASELINE_KEY, CONFIG, config_key, index_by_config, read_tolerances
from diagnostics.judge.repro import REPRO, REPRO_COLUMNS

CHECKOUT = paths.CHECKOUT
INIT = "init"  # the baseline's seed checkpoints (train.initial_weights)


class BaselineRefused(report.ReportError):
    """A baseline update that would record runs that did not happen (errors, skips)."""


def root() -> Path:
    """``reports/baselines`` of the checkout this package comes from; of the working directory
    when the package is installed elsewhere (no checkout around it)."""
    here = CHECKOUT / paths.BASELINES
    return here if here.is_dir() else paths.BASELINES.resolve()


def directory(grid_name: str, option: str | Path | None = None) -> Path:
    """The baseline folder of a grid: ``option`` (a folder, or a runs.csv in one) or the root's."""
    if option:
        path = Path(option)
        return path.parent if path.suffix == ".csv" else path
    return root() / grid_name


def key_of(row) -> tuple:
    return tuple(str(row[k]) for k in BASELINE_KEY)


@dataclass
class Baseline:
    """One baseline folder, read once. Missing files read as empty: lookups return None."""

    path: Path
    runs: dict[tuple, dict] = field(default_factory=dict)
    tolerances: dict[tuple, dict] = field(default_factory=dict)
    envelopes: dict[str, pd.DataFrame] = field(default_factory=dict)  # calibrated run_id -> its envelope
    repro: pd.DataFrame | None = None

    @classmethod
    def load(cls, path: Path) -> Baseline:
        """Read a baseline folder; a file that exists but cannot be read raises ReportError."""
        path = Path(path)
        runs_path, repro_path = path / report.RUNS, path / REPRO
        b = cls(path)
        if runs_path.exists():
            df = report.read(runs_path, required=BASELINE_KEY + ["status", "final_loss"])
            b.runs = {key_of(r): r for r in df.to_dict("records")}
        tol, env = read_tolerances(path, None)
        b.tolerances = index_by_config(tol)
        if env is not None:
            b.envelopes = dict(iter(env.groupby("run_id")))
        if repro_path.exists():
            b.repro = report.read(repro_path, required=REPRO_COLUMNS)
        return b

    @property
    def exists(self) -> bool:
        return bool(self.runs)

    def row(self, run: dict) -> dict | None:
        return self.runs.get(key_of(run))

    def tolerance(self, run: dict) -> dict | None:
        return self.tolerances.get(config_key(run.get(c, report.AXIS_DEFAULTS.get(c)) for c in CONFIG))

    def envelope(self, run: dict) -> pd.DataFrame | None:
        """The calibrated per-step noise of this very run (one of the perturbed seeds), or None."""
        return self.envelopes.get(str(run["run_id"]))

    def repro_result(self, run_id: str, check: str) -> str | None:
        if self.repro is None:
            return None
        hit = self.repro[(self.repro["run_id"] == run_id) & (self.repro["check"] == check)]
        return None if hit.empty else str(hit.iloc[0]["result"])


def merge_rows(old: pd.DataFrame | None, new: pd.DataFrame, key: list[str], sort: list[str]) -> pd.DataFrame:
    """``old`` with ``new``'s rows replacing those of the same key."""
    if old is None or old.empty:
        return new.sort_values(sort, kind="stable").reset_index(drop=True)
    new_keys = set(map(tuple, new[key].astype(str).to_numpy()))
    kept = old[[k not in new_keys for k in map(tuple, old[key].astype(str).to_numpy())]]
    return pd.concat([kept, new], ignore_index=True).sort_values(sort, kind="stable").reset_index(drop=True)


def not_run(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs that errored or were skipped."""
    return runs[runs["status"].astype(str).isin(NO_RESULT)]


def update(path: Path, runs: pd.DataFrame, repro: pd.DataFrame | None = None, force: bool = False) -> str:
    """Write a session's runs (and reproducibility results) into the baseline folder ``path``;
    returns one line saying what was written. Raises BaselineRefused when a run errored or was
    skipped, unless ``force``."""
    bad = not_run(runs) if len(runs) else runs
    if len(bad) and not force:
        first = bad.iloc[0]
        kind = "skipped" if first["status"] == "skipped" else "errored"
        raise BaselineRefused(f"baseline not updated: {len(bad)} run(s) errored or were skipped, e.g. "
                              f"{first['run_id']} {kind} ({first['status_reason']}); fix them or pass --force")
    path = Path(path)
    if len(runs):
        old = report.read(path / report.RUNS, required=BASELINE_KEY) if (path / report.RUNS).exists() else None
        report.write_atomic(path / report.RUNS, merge_rows(old, runs, BASELINE_KEY, ["run_id"]))
    if repro is not None and not repro.empty:
        old = report.read(path / REPRO, required=REPRO_COLUMNS) if (path / REPRO).exists() else None
        report.write_atomic(path / REPRO, merge_rows(old, repro, ["run_id", "check"], ["run_id", "check"]))
    stale = " (tolerances.csv is from an earlier calibration: rerun diagnostics calibrate)" \
        if (path / calibrate.TOLERANCES).exists() else " (no tolerances: run diagnostics calibrate)"
    n_repro = 0 if repro is None else len(repro)
    return f"baseline updated in {path}: {len(runs)} runs, {n_repro} reproducibility results{stale}"
