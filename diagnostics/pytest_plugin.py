"""pytest plugin: the suite options, device discovery, grid parametrization, per-worker setup,
the shared report directory and the baseline. The logic lives in the library; this module only
wires it into pytest (and is the only module that imports pytest)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from . import baseline, compare, data, determinism, devices, env, options, perturb, plugins, report, repro, stability, train
from .spec import Grid, GridOptions, RunSpec, SpecError, parse_init_dir, parse_shard, resolve_grid, shard
from .train import RunResult

# fixtures that hand a test a grid point: a test taking one is a ``grid`` test (writes reports)
GRID_FIXTURES = {"run_spec", "ddp_spec", "cross_device_spec"}


@dataclass
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


SESSION = pytest.StashKey[Session]()


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        plugins.load_entry_points()  # before the help lists the registries
    except plugins.PluginError as e:
        raise pytest.UsageError(str(e)) from None
    g = parser.getgroup("diagnostics", "convergence diagnostics grid")
    options.add(g, options.GRID_OPTIONS + options.SESSION_OPTIONS + options.VERDICT_OPTIONS)
    g.addoption("--perturb", default=None, help="calibration rerun: change only the arithmetic "
                                                 f"({', '.join(perturb.PERTURBATIONS)}); no baseline judgement")
    g.addoption("--quiet-runs", action="store_true", help="no progress line per finished run")


def is_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker process (the controller, or a run without xdist, is not)."""
    return hasattr(config, "workerinput")


def build_session(config: pytest.Config) -> Session:
    opt = config.getoption
    grid_options = options.grid_options(opt)
    resolve_grid(replace(grid_options, grid=grid_options.grid or "default"))  # validate every option now
    worker = getattr(config, "workerinput", {}).get("workerid", "")
    try:
        v = {o.dest: options.value(opt, o) for o in options.SESSION_OPTIONS}
        policy, margin = options.policy(opt)
        perturb.get(opt("perturb"))
    except ValueError as e:
        raise SpecError(str(e)) from None
    session = Session(grid_options, Path(v["report_dir"]), Path(v["data_dir"]), v["data_root"], v["baseline"],
                      v["update_baseline"], opt("quiet_runs"), worker, v["probes"], parse_shard(v["shard"]),
                      policy, margin, v["force"], opt("perturb"), parse_init_dir(v["init_dir"]))
    if session.judges:
        session.baseline(grid_options.grid or "default")  # a baseline that cannot be read fails the session now
    if is_worker(config):
        session.token = config.workerinput.get("diagnostics_token", session.token)
    return session


def check_data(session: Session) -> None:
    """Load every dataset the grids may need once, so bad data fails before any training."""
    specs = [s for name in ("default", session.options.grid) if name for s in session.grid(name).specs()]
    for model, size in {(s.model, s.size) for s in specs}:
        data.for_model(model, size, session.data_dir, session.data_root)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "grid: a test parametrized over the diagnostic grid")
    try:
        plugins.load(config.getoption("recipe_plugins"))  # every process, before the grid is validated
        session = build_session(config)
        if not is_worker(config):
            check_data(session)
    except (SpecError, data.DataError, report.ReportError, plugins.PluginError) as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[SESSION] = session
    if not is_worker(config):
        config.pluginmanager.register(Progress(config), "diagnostics-progress")
    determinism.configure_process()  # process-wide settings that must precede any CUDA work
    if is_worker(config):  # an xdist worker: share the cores, pin one GPU
        n_workers = int(config.workerinput.get("workercount", 1))
        torch.set_num_threads(devices.threads_per_worker(n_workers))
        devices.pin_worker(int(session.worker.removeprefix("gw") or 0))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "run_spec" in metafunc.fixturenames:
        session = metafunc.config.stash[SESSION]
        specs = session.grid(getattr(metafunc.module, "GRID", "default")).specs()
        if session.shard:
            specs = shard(specs, *session.shard)
        metafunc.parametrize("run_spec", specs, ids=[s.id for s in specs])


def run_grid_point(spec: RunSpec, session: Session, record_property) -> None:
    """The body of every grid test: train, judge against the baseline (compare.check_run),
    record, assert. A run that raised fails; so does a verdict the session's policy fails
    (compare.Policy: a regression, an improvement, no baseline at all). Calibration reruns
    (``--perturb``) and baseline updates record without judging."""
    result = train.run(spec, session.data_dir, session.data_root, worker=session.worker, probes=session.probes,
                       perturbation=session.perturbation, init_dir=session.init_dir)
    if result.status == "skipped":
        session.record(result)  # the row says why; the test is a skip with that reason, never silent
        pytest.skip(f"{spec.id}: skipped: {result.row['status_reason']}")
    judged = session.judges
    if judged:
        base = session.baseline(spec.grid)
        verdict = compare.check_run(result.row, base.row(result.row), base.tolerance(result.row), session.margin,
                                    result.steps, base.envelope(result.row), family_size=session.family_size(spec.grid))
    else:
        verdict = dict(verdict="not judged", direction="", detail="calibration rerun or baseline update")
    result.row["baseline_check"] = verdict["verdict"]
    session.record(result)
    record_property("diagnostics_run", progress_line(result.row, verdict))
    if result.status == "error":
        raise AssertionError(f"{spec.id} raised: {result.row['status_reason']}")
    missing = report.missing_fields(result.row)
    assert not missing, f"{spec.id}: incomplete record, empty {missing}"
    failure = session.policy.failure(verdict) if judged else None
    assert failure is None, f"{spec.id}: {verdict['verdict']}: {failure}: {verdict['detail']}"


def progress_line(row: dict, verdict: dict) -> str:
    return (f"{row['run_id']:<48} {row['status']:<19} final {float(row.get('final_loss', 'nan')):8.4f}  "
            f"{float(row.get('runtime_s', 'nan')):6.1f}s  {verdict['verdict']}")


@pytest.fixture
def grid_point(diagnostics_session, record_property):
    """Call with the test's RunSpec: runs and checks it (see run_grid_point)."""
    return lambda spec: run_grid_point(spec, diagnostics_session, record_property)


SESSION_FILE = ".session"  # in the report directory: the token of the session that started it


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that takes a grid point (``GRID_FIXTURES``) is a grid test, declared or not."""
    for item in items:
        if GRID_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("grid"):
            item.add_marker(pytest.mark.grid)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Whichever process collected grid tests (``grid`` marker) starts a fresh report directory,
    once per session: the first to take the directory's lock writes the session's token, and a
    process that finds its token there leaves it alone (xdist workers all collect before any test
    runs, so none writes into a directory that is then emptied). Looking (--collect-only) never
    deletes a report."""
    config = session.config
    s = config.stash[SESSION]
    if config.option.collectonly or not any(i.get_closest_marker("grid") for i in session.items):
        return
    marker = s.report_dir / SESSION_FILE
    s.report_dir.mkdir(parents=True, exist_ok=True)
    with report.locked(marker):
        if not marker.exists() or marker.read_text() != s.token:
            report.reset(s.report_dir)
            report.write_env(s.report_dir, env.capture(s.options.devices))
            marker.write_text(s.token)


def started_here(s: Session) -> bool:
    """Whether this session's processes started the report directory (so the controller
    finalizes it and prints its summary)."""
    marker = s.report_dir / SESSION_FILE
    return marker.exists() and marker.read_text() == s.token


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: each worker carries the controller's session token."""
    node.workerinput["diagnostics_token"] = node.config.stash[SESSION].token


@pytest.fixture(scope="session")
def diagnostics_session(pytestconfig: pytest.Config) -> Session:
    return pytestconfig.stash[SESSION]


class Progress:
    """Controller-side progress: one line per finished run (workers ship the line in the test
    report's user_properties), and the summary by status at the end."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @property
    def terminal(self):
        return self.config.pluginmanager.get_plugin("terminalreporter")

    @staticmethod
    def line(report: pytest.TestReport) -> str | None:
        return dict(report.user_properties).get("diagnostics_run") if report.when == "call" else None

    @property
    def quiet(self) -> bool:
        return self.config.stash[SESSION].quiet

    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config):
        if self.line(report) and not self.quiet:  # the run's own line replaces pytest's dot
            return report.outcome, "", report.outcome.upper()
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        line = self.line(report)
        if line and self.terminal and not self.quiet:
            self.terminal.ensure_newline()
            self.terminal.write_line(f"{line}  {'' if report.passed else report.outcome.upper()}".rstrip())

    def pytest_terminal_summary(self, terminalreporter) -> None:
        session = self.config.stash[SESSION]
        path = session.report_dir / report.RUNS
        if not started_here(session) or not path.exists():
            return
        runs = report.read(path)
        counts = runs["status"].value_counts().to_dict()
        terminalreporter.write_sep("-", "diagnostics")
        terminalreporter.write_line(f"{len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        terminalreporter.write_line(f"reports: {session.report_dir}/ ({', '.join(report.SCHEMAS)})")
        if (session.report_dir / stability.STABILITY).exists():
            terminalreporter.write_line(stability.summary(report.read_csv(session.report_dir / stability.STABILITY)))


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    s = config.stash.get(SESSION, None)
    if s is None or is_worker(config) or not started_here(s):
        return
    report.finalize(s.report_dir)
    runs_path, repro_path = s.report_dir / report.RUNS, s.report_dir / repro.REPRO
    runs = report.read(runs_path) if runs_path.exists() else None
    if s.update_baseline:
        update_baselines(session, s, runs, report.read(repro_path) if repro_path.exists() else None)
    if runs is None:
        return
    table = stability.table(runs)
    if not table.empty:
        report.write_atomic(s.report_dir / stability.STABILITY, table)
    seeds = repro.seed_table(runs)
    if not seeds.empty:
        report.write_atomic(s.report_dir / repro.SEEDS, seeds)


def update_baselines(session: pytest.Session, s: Session, runs: pd.DataFrame | None, repro_rows) -> None:
    """--update-baseline: each grid's rows into its baseline folder (baseline.update); a refusal
    (errored or skipped runs without --force) is one line and a failing exit status."""
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    groups = list(runs.groupby("grid")) if runs is not None else [(s.options.grid or "default", runs)]
    for grid_name, rows in groups:
        try:
            line = baseline.update(s.baseline_dir(grid_name), rows if rows is not None else pd.DataFrame(),
                                   repro_rows, s.force)
        except report.ReportError as e:
            line = str(e)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if terminal:
            terminal.write_line(line)
