"""A grid session, without pytest: what one session needs to run grid points (``Session``),
one point trained, judged and recorded (``Session.run_point``), the report directory the session
starts (``claim``: the token protocol) and finishes (``finish``: sorted files, the tables derived
from all runs, the baseline update). ``pytest_plugin`` only hooks these into pytest."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from . import baseline, compare, env, report, repro, stability, train
from .spec import Grid, GridOptions, RunSpec, resolve_grid
from .train import RunResult

SESSION_FILE = ".session"  # in the report directory: the token of the session that started it


@dataclass(kw_only=True)
class Session:
    """What one pytest session needs to run grid points. Each suite module names its default
    grid (``GRID = "..."``); ``--grid`` overrides it for every suite."""

    options: GridOptions  # command-line choices, validated; ``grid`` None = each suite's default
    report_dir: Path
    data_dir: Path
    data_root: str | None
    baseline_option: str | None
    update_baseline: bool
    quiet: bool
    worker: str
    probes: bool = False
    shard: tuple[int, int] | None = None
    policy: compare.Policy = field(default_factory=compare.Policy)  # which verdicts fail a run
    margin: float = compare.MARGIN
    force: bool = False  # --update-baseline even with errored or skipped runs
    perturbation: str | None = None  # calibration reruns: no baseline judgement
    init_dir: Path | None = None  # seed checkpoint folder (train.initial_weights)
    grids: dict = field(default_factory=dict)  # grid name -> resolved Grid
    baselines: dict = field(default_factory=dict)  # grid name -> baseline.Baseline
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this session (xdist: the controller's)

    def grid(self, default: str = "default") -> Grid:
        name = self.options.grid or default
        if name not in self.grids:
            self.grids[name] = resolve_grid(replace(self.options, grid=name))
        return self.grids[name]

    @property
    def judges(self) -> bool:
        """Whether runs are judged against the baseline: not in calibration reruns (``--perturb``)
        nor while the baseline itself is being written (``--update-baseline``)."""
        return not (self.perturbation or self.update_baseline)

    def family_size(self, grid_name: str) -> int:
        """The runs whose checks form one family (compare.check_run): the whole grid, every shard."""
        return len(self.grid(grid_name).specs())

    def baseline_dir(self, grid_name: str) -> Path:
        return baseline.directory(grid_name, self.baseline_option)

    def baseline(self, grid_name: str) -> baseline.Baseline:
        if grid_name not in self.baselines:
            self.baselines[grid_name] = baseline.Baseline.load(self.baseline_dir(grid_name))
        return self.baselines[grid_name]

    def record_repro(self, row: dict) -> None:
        report.append(self.report_dir / repro.REPRO, [row], repro.REPRO_COLUMNS)

    def record(self, result: RunResult) -> None:
        """Trace and events first, the runs.csv row last: a session killed in between never
        leaves a run row without its trace."""
        report.append(self.report_dir / report.STEPS, result.steps, report.STEPS_COLUMNS)
        report.append(self.report_dir / report.EVENTS, result.events, report.EVENTS_COLUMNS)
        report.append(self.report_dir / report.RUNS, [result.row], report.RUNS_COLUMNS)

    def run_point(self, spec: RunSpec) -> tuple[RunResult, dict]:
        """Train one grid point, judge it against the baseline (``compare.check_run``) and record
        it; returns the result and the verdict. A point this stack cannot run is recorded with its
        reason, unjudged; calibration reruns (``--perturb``) and baseline updates record without
        judging."""
        result = train.run(spec, self.data_dir, self.data_root, worker=self.worker, probes=self.probes,
                           perturbation=self.perturbation, init_dir=self.init_dir)
        if result.status == "skipped":
            self.record(result)
            return result, dict(verdict="skipped", direction="", detail=result.row["status_reason"])
        if self.judges:
            base = self.baseline(spec.grid)
            verdict = compare.check_run(result.row, base.row(result.row), base.tolerance(result.row), self.margin,
                                        result.steps, base.envelope(result.row), family_size=self.family_size(spec.grid))
        else:
            verdict = dict(verdict="not judged", direction="", detail="calibration rerun or baseline update")
        result.row["baseline_check"] = verdict["verdict"]
        self.record(result)
        return result, verdict


def claim(s: Session) -> None:
    """Start a fresh report directory once per session: the first of the session's processes to
    take the directory's lock writes the session's token (and the environment); a process that
    finds its token there leaves it alone (xdist workers all collect before any test runs, so
    none writes into a directory that is then emptied)."""
    marker = s.report_dir / SESSION_FILE
    s.report_dir.mkdir(parents=True, exist_ok=True)
    with report.locked(marker):
        if not marker.exists() or marker.read_text() != s.token:
            report.reset(s.report_dir)
            report.write_env(s.report_dir, env.capture(s.options.devices))
            marker.write_text(s.token)


def started_here(s: Session) -> bool:
    """Whether this session's processes started the report directory (so its controller
    finishes it and prints its summary)."""
    marker = s.report_dir / SESSION_FILE
    return marker.exists() and marker.read_text() == s.token


def derived_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables computed from all of a report's runs together (never concatenated): the
    per-seed spread of each config, the stability sweep's table; empty ones left out."""
    tables = {repro.SEEDS: repro.seed_table(runs), stability.STABILITY: stability.table(runs)}
    return {name: t for name, t in tables.items() if not t.empty}


def write_derived(report_dir: Path, runs: pd.DataFrame) -> dict[str, int]:
    """``derived_tables`` written into ``report_dir``; returns their row counts."""
    tables = derived_tables(runs)
    for name, table in tables.items():
        report.write_atomic(Path(report_dir) / name, table)
    return {name: len(t) for name, t in tables.items()}


def finish(s: Session) -> tuple[list[str], bool]:
    """Sort the session's files, write the derived tables and, with ``--update-baseline``, each
    grid's rows into its baseline folder. Returns the lines to show and whether the session
    must fail (a refused baseline update: errored or skipped runs without ``--force``)."""
    report.finalize(s.report_dir)
    runs_path, repro_path = s.report_dir / report.RUNS, s.report_dir / repro.REPRO
    runs = report.read(runs_path) if runs_path.exists() else None
    lines, failed = [], False
    if s.update_baseline:
        repro_rows = report.read(repro_path) if repro_path.exists() else None
        groups = list(runs.groupby("grid")) if runs is not None else [(s.options.grid or "default", runs)]
        for grid_name, rows in groups:
            try:
                lines.append(baseline.update(s.baseline_dir(grid_name), rows if rows is not None else pd.DataFrame(),
                                             repro_rows, s.force))
            except report.ReportError as e:
                lines.append(str(e))
                failed = True
    if runs is not None:
        write_derived(s.report_dir, runs)
    return lines, failed
