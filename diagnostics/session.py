"""A grid session, without pytest: what one session needs to run grid points (``Session``),
one point trained, judged and recorded (``Session.run_point``), the report directory the session
starts (``claim``: the token protocol) and finishes (``finish``: sorted files, the tables derived
from all runs, the baseline update). ``pytest_plugin`` only hooks these into pytest."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from diagnostics import report
from diagnostics.grid.spec import Grid, GridOptions, RunSpec, resolve_grid
from diagnostics.judge import baseline, compare, repro, stability, verdicts
from diagnostics.judge import parallel as one_process
from diagnostics.run import env, parallel, train
from diagnostics.run.train import RunResult

SESSION_FILE = ".session"  # in the report directory: the token of the session that started it
RUNNING_FILE = ".running"  # ... while that session has not finished (``finish`` removes it)
RESUMED = ".resumed"  # what a resumed session kept (one line, printed in its summary)
# what a kept row must share with this process, besides its grid point: the code and the stack
RESUME_MATCH = ("git_sha", "torch_version", "torchvision_version", "lion_pytorch_version", "python_version",
                "cuda_version", "cudnn_version", "platform", "cpu_model")


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
    policy: verdicts.Policy = field(default_factory=verdicts.Policy)  # which verdicts fail a run
    margin: float = verdicts.MARGIN
    force: bool = False  # --update-baseline even with errored or skipped runs
    perturbation: str | None = None  # calibration reruns: no baseline judgement
    init_dir: Path | None = None  # seed checkpoint folder (train.initial_weights)
    resume: bool = False  # keep an interrupted session's finished runs (claim, run_point)
    no_baseline: str = ""  # the grid has no baseline at all on its devices: the one line that says so
    kept_runs: dict | None = None  # resuming: run_id -> the kept RunResult (Session.kept, read once)
    grids: dict = field(default_factory=dict)  # grid name -> resolved Grid
    baselines: dict = field(default_factory=dict)  # grid name -> baseline.Baseline
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this session (xdist: the controller's)
    references: dict = field(default_factory=dict)  # run_id -> RunResult of single-process runs this process trained

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

    def runs_judged(self, grid_name: str) -> int:
        """The runs whose checks are corrected together (compare.check_run's Bonferroni): the whole grid, every shard."""
        return len(self.grid(grid_name).specs())

    def baseline_dir(self, grid_name: str) -> Path:
        return baseline.directory(grid_name, self.baseline_option)

    def baseline(self, grid_name: str) -> baseline.Baseline:
        if grid_name not in self.baselines:
            self.baselines[grid_name] = baseline.Baseline.load(self.baseline_dir(grid_name))
        return self.baselines[grid_name]

    def missing_baseline(self, grid_name: str) -> str:
        """One line when no run of the grid has a baseline row (a first run on a new device
        type): what is missing, the command that creates it and how long that takes; "" when
        any run has one, or the session does not judge."""
        specs = self.grid(grid_name).specs()
        if not self.judges or not specs or self.policy.allow_no_baseline:
            return ""
        base = self.baseline(grid_name)
        if any(base.row(train.identity(spec)) for spec in specs):
            return ""
        import torch

        from diagnostics.judge import calibrate

        types = sorted({spec.device.split(":")[0] for spec in specs})
        on_gpu = types != ["cpu"]
        gpus = max(torch.cuda.device_count(), 1) if on_gpu else 1
        minutes, runs = calibrate.estimate_minutes(specs, gpus=gpus)
        took = (f"about {minutes / 60:.1f} h" if minutes >= 90 else f"about {minutes:.0f} min" if minutes >= 1
                else "under a minute")
        where = f"{gpus} GPU{'s' if gpus > 1 else ''}" if on_gpu else "1 CPU"
        return (f"no baseline for grid {grid_name} on {', '.join(types)}: none of its {len(specs)} runs is in "
                f"{self.baseline_dir(grid_name)}. Create it with `python -m diagnostics calibrate --grid {grid_name} "
                f"--devices {','.join(types)}` ({took}: {runs} runs at this project's measured speed on {where}), "
                "then commit that folder. This session trains the grid and fails once, at its end "
                "(--allow-no-baseline: it passes unjudged).")

    def seed_checkpoints(self, grid_name: str):
        """Where a run's initial weights come from: ``--init-dir`` where given; else the
        baseline's committed seed checkpoints (``BASELINE/init``: read-only, written only by
        ``--update-baseline`` for a seed it lacks), so the suite trains and pairs from the
        baseline's weights whatever torch's seeded init does; else torch's seeded init."""
        from diagnostics.run.checkpoint import SeedCheckpoints

        if self.init_dir is not None:
            return self.init_dir
        folder = self.baseline_dir(grid_name) / baseline.INIT
        if folder.is_dir() or self.update_baseline:
            return SeedCheckpoints(folder, write=self.update_baseline)
        return None

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
        judging. Resuming, a point whose row the interrupted session finished (``claim`` kept
        it) is not trained again: its row and trace are read back and judged as they were."""
        kept = self.kept(spec) if self.resume else None
        result = kept or parallel.run(spec, data_dir=self.data_dir, data_root=self.data_root, worker=self.worker,
                                      probes=self.probes, perturbation=self.perturbation,
                                      init_dir=self.seed_checkpoints(spec.grid))
        if spec.parallel == "none" and not kept:
            self.references[spec.id] = result
        if result.status == "skipped":
            if not kept:
                self.record(result)
            return result, dict(verdict="skipped", direction="", detail=result.row["status_reason"])
        if spec.parallel != "none" and not kept and not self.perturbation:
            result.row.update({f"one_process_{k}": v for k, v in self.check_one_process(spec, result).items()})
        if self.judges:
            base = self.baseline(spec.grid)
            verdict = compare.check_run(result.row, base.row(result.row), base.tolerance(result.row), self.margin,
                                        result.steps, base.envelope(result.row), runs_judged=self.runs_judged(spec.grid))
        else:
            verdict = dict(verdict="not judged", direction="", detail="calibration rerun or baseline update")
        result.row["baseline_check"] = verdict["verdict"]
        result.row["init_check"] = verdict.get("init_verdict", "")
        if not kept:
            self.record(result)
        return result, verdict

    def check_one_process(self, spec: RunSpec, result: RunResult) -> dict:
        """``judge.parallel``'s check of a distributed run against its single-process reference:
        this process's own run of it, else this session's recorded one, else trained here. Judged
        with the distributed config's measured noise, else the reference config's."""
        ref_spec = parallel.one_process_of(spec)
        ref = self.references.get(ref_spec.id) if ref_spec.parallel == "none" else None
        ref = ref or self.recorded(ref_spec.id) if ref_spec.parallel == "none" else ref
        if ref is None:
            kw = dict(data_dir=self.data_dir, data_root=self.data_root, worker=self.worker,
                      init_dir=self.seed_checkpoints(spec.grid))
            ref = parallel.reference(spec, **kw)
        base = self.baseline(spec.grid)
        tol = base.tolerance(result.row) or base.tolerance(dict(ref.row, run_id=ref_spec.id))
        return one_process.against_one_process(result.row, result.steps, ref.row if ref else None,
                                               ref.steps if ref else [], tol, self.margin,
                                               self.runs_judged(spec.grid))

    def recorded(self, run_id: str) -> RunResult | None:
        """A run this session already recorded in its report directory (another worker's), or None."""
        runs_path, steps_path = self.report_dir / report.RUNS, self.report_dir / report.STEPS
        if not runs_path.exists() or not steps_path.exists():
            return None
        runs = report.read_csv(runs_path)
        rows = runs[runs["run_id"] == run_id].to_dict("records")
        if not rows:
            return None
        steps = report.read_csv(steps_path)
        return RunResult(rows[-1], steps[steps["run_id"] == run_id].to_dict("records"))

    def kept(self, spec: RunSpec) -> RunResult | None:
        """The finished run of ``spec`` that ``claim`` kept in the report directory, or None. The
        kept rows and traces are read once per process, at its first point: ``claim`` ran before
        any, and this session's own rows (other points) are never looked up."""
        if self.kept_runs is None:
            runs_path, steps_path = self.report_dir / report.RUNS, self.report_dir / report.STEPS
            runs = report.read_csv(runs_path) if runs_path.exists() else pd.DataFrame(columns=["run_id"])
            steps = report.read_csv(steps_path) if steps_path.exists() else pd.DataFrame(columns=["run_id"])
            traces = {run_id: t.to_dict("records") for run_id, t in steps.groupby("run_id")}
            self.kept_runs = {row["run_id"]: RunResult(row, traces.get(row["run_id"], []))
                              for row in runs.to_dict("records")}
        return self.kept_runs.get(spec.id)


def unfinished(report_dir: Path) -> int:
    """How many finished runs an interrupted session left in ``report_dir``: 0 when the directory
    is empty or its session finished. A session marks the directory RUNNING_FILE when it starts
    and ``finish`` removes the mark, so a killed session's directory keeps it; one written before
    the mark existed has none and counts as finished."""
    report_dir = Path(report_dir)
    running, runs = report_dir / RUNNING_FILE, report_dir / report.RUNS
    if not running.exists() or not runs.exists():
        return 0
    return len(report.read_csv(runs))


def refuse_unfinished(report_dir: Path) -> None:
    """An interrupted session's report directory is never silently overwritten: ReportError in
    one line naming --resume."""
    n = unfinished(report_dir)
    if n:
        raise report.ReportError(f"{report_dir} holds an interrupted session with {n} finished run(s): rerun with "
                                 "--resume to keep them and train only the rest, or choose another --report-dir "
                                 "(or delete it)")


def same(a, b) -> bool:
    """Two report cells equal (empty equals empty; numbers compared as numbers)."""
    empty = lambda x: x is None or (isinstance(x, float) and x != x) or x == ""  # noqa: E731
    if empty(a) or empty(b):
        return empty(a) and empty(b)
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def resumable(runs: pd.DataFrame, specs: list[RunSpec], now: dict) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows of an interrupted session's runs.csv a resumed one keeps: a grid point of this
    session with the same RunSpec fields (``train.identity``), the same code and stack
    (RESUME_MATCH against ``now``, this process's ``env.versions()``), and a trained result (an
    ``error`` row is tried again). Returns them and the count of each reason a row was dropped."""
    by_id = {s.id: train.identity(s) for s in specs}
    keep, dropped = [], {}
    for row in runs.to_dict("records"):
        ident = by_id.get(row["run_id"])
        why = ("not in this grid" if ident is None
               else "its grid point changed" if not all(same(row.get(k), v) for k, v in ident.items())
               else "another code version or stack" if not all(same(row.get(k), now.get(k)) for k in RESUME_MATCH)
               else "it errored" if row.get("status") == "error" else "")
        if why:
            dropped[why] = dropped.get(why, 0) + 1
        else:
            keep.append(row)
    return pd.DataFrame(keep, columns=runs.columns), dropped


def resume_directory(report_dir: Path, specs: list[RunSpec]) -> str:
    """Prune an interrupted session's report directory for ``--resume``: keep the resumable runs
    (``resumable``) with their traces and events, drop the rest and every half-written run (a
    trace or events whose runs.csv row was never written: ``Session.record`` writes it last).
    Returns the line that says what was kept."""
    report_dir = Path(report_dir)
    runs_path = report_dir / report.RUNS
    runs = report.read_csv(runs_path) if runs_path.exists() else pd.DataFrame(columns=["run_id"])
    kept, dropped = resumable(runs, specs, env.versions())
    ids = set(kept["run_id"])
    steps_path = report_dir / report.STEPS
    half = len(set(report.read_csv(steps_path)["run_id"]) - set(runs["run_id"])) if steps_path.exists() else 0
    for path in (steps_path, report_dir / report.EVENTS):
        if path.exists():
            table = report.read_csv(path)
            report.write_atomic(path, table[table["run_id"].isin(ids)])
    if runs_path.exists():
        report.write_atomic(runs_path, kept)
    for name in (repro.REPRO, repro.SEEDS, stability.STABILITY, report.PAGE):
        (report_dir / name).unlink(missing_ok=True)
    reasons = "".join(f", {n} dropped: {why}" for why, n in sorted(dropped.items()))
    return (f"resumed: kept {len(kept)} finished run(s) of the interrupted session, training the other "
            f"{len(set(s.id for s in specs) - ids)}{reasons}" + (f", {half} half-written run(s) dropped" if half else ""))


def claim(s: Session, specs: list[RunSpec] | None = None) -> None:
    """Start a fresh report directory once per session: the first of the session's processes to
    take the directory's lock writes the session's token (and the environment); a process that
    finds its token there leaves it alone (xdist workers all collect before any test runs, so
    none writes into a directory that is then emptied). A directory an interrupted session left
    is refused (``refuse_unfinished``) unless the session resumes (``resume_directory``: what
    it keeps of it goes to RESUMED)."""
    marker = s.report_dir / SESSION_FILE
    s.report_dir.mkdir(parents=True, exist_ok=True)
    with report.locked(marker):
        if marker.exists() and marker.read_text() == s.token:
            return
        if s.resume and unfinished(s.report_dir):
            line = resume_directory(s.report_dir, specs or [])
        else:
            if not s.update_baseline and not s.perturbation:
                refuse_unfinished(s.report_dir)
            report.reset(s.report_dir)
            line = ""
        report.write_env(s.report_dir, env.capture(s.options.devices))
        (s.report_dir / RESUMED).unlink(missing_ok=True)
        if line:
            (s.report_dir / RESUMED).write_text(line + "\n")
        marker.write_text(s.token)
        (s.report_dir / RUNNING_FILE).write_text(s.token)


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


def finish(s: Session, complete: bool = True) -> tuple[list[str], bool]:
    """Sort the session's files, write the derived tables and, with ``--update-baseline``, each
    grid's rows into its baseline folder; a ``complete`` session (not interrupted: Ctrl-C ends
    one here too) marks the directory finished (removes RUNNING_FILE) and removes its lock files.
    Returns the lines to show and whether the session must fail (a refused baseline update:
    errored or skipped runs without ``--force``)."""
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
    if complete:
        (s.report_dir / RUNNING_FILE).unlink(missing_ok=True)
    report.remove_locks(s.report_dir)
    return lines, failed
