"""pytest plugin: the suite options, device discovery, grid parametrization, per-worker setup,
the shared report directory and the baseline. The logic lives in the library; this module only
wires it into pytest (and is the only module that imports pytest)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diagnostics import options, report
from diagnostics.grid import data, devices, plugins
from diagnostics.grid.spec import RunSpec, SpecError, parse_init_dir, parse_positive_int, parse_shard, resolve_grid, shard
from diagnostics.judge import parallel as one_process
from diagnostics.judge import stability
from diagnostics.run import determinism, parallel, perturb
from diagnostics.session import RESUMED, Session, claim, finish, started_here

# fixtures that hand a test a grid point: a test taking one is a ``grid`` test (writes reports)
GRID_FIXTURES = {"run_spec", "ddp_spec", "cross_device_spec"}


SESSION = pytest.StashKey[Session]()


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        plugins.load_entry_points()  # before the help lists the registries
    except plugins.PluginError as e:
        raise pytest.UsageError(str(e)) from None
    g = parser.getgroup("diagnostics", "convergence diagnostics grid")
    options.add(g, options.GRID_OPTIONS + options.SESSION_OPTIONS + options.VERDICT_OPTIONS + options.RESUME_OPTIONS)
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
    session = Session(options=grid_options, report_dir=Path(v["report_dir"]), data_dir=Path(v["data_dir"]),
                      data_root=v["data_root"], baseline_option=v["baseline"], update_baseline=v["update_baseline"],
                      quiet=opt("quiet_runs"), worker=worker, probes=v["probes"], shard=parse_shard(v["shard"]),
                      policy=policy, margin=margin, force=v["force"], perturbation=opt("perturb"),
                      init_dir=parse_init_dir(v["init_dir"]), resume=opt("resume"))
    if v["world_size"] is not None:  # every process of the session, the ranks included, reads it
        os.environ[parallel.WORLD_ENV] = str(parse_positive_int(v["world_size"], "world-size"))
    elif not is_worker(config):  # an xdist worker inherits the controller's
        os.environ.pop(parallel.WORLD_ENV, None)
    if session.judges:
        session.baseline(grid_options.grid or "default")  # a baseline that cannot be read fails the session now
        session.no_baseline = session.missing_baseline(grid_options.grid or "default")
    if is_worker(config):
        session.token = config.workerinput.get("diagnostics_token", session.token)
    return session


def check_data(session: Session) -> None:
    """Load every dataset the grids may need once, so bad data fails before any training."""
    specs = [s for name in ("default", session.options.grid) if name for s in session.grid(name).specs()]
    for model, size in {(s.model, s.model_size) for s in specs}:
        data.for_model(model, size, session.data_dir, session.data_root)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "grid: a test parametrized over the diagnostic grid")
    try:
        plugins.load(config.getoption("recipe_plugins"))  # every process, before the grid is validated
        session = build_session(config)
        if not is_worker(config):
            check_data(session)
            check_parallel(session)
    except (SpecError, data.DataError, report.ReportError, plugins.PluginError, parallel.ParallelError) as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[SESSION] = session
    if not is_worker(config):
        config.pluginmanager.register(Progress(config), "diagnostics-progress")
    determinism.configure_process()  # process-wide settings that must precede any CUDA work
    if is_worker(config):  # an xdist worker: share the cores, pin one GPU
        n_workers = int(config.workerinput.get("workercount", 1))
        torch.set_num_threads(devices.threads_per_worker(n_workers))
        devices.pin_worker(int(session.worker.removeprefix("gw") or 0))


def check_parallel(session: Session) -> None:
    """Distributed points need a world this machine holds and a free rendezvous port: said in
    one line before anything trains (raises ParallelError)."""
    specs = session.grid(session.options.grid or "default").specs()
    types = sorted({torch.device(s.device).type for s in specs if s.parallel != "none"})
    for device_type in types:
        parallel.check_world(device_type, parallel.asked_world())
    if types:
        parallel.port()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "run_spec" in metafunc.fixturenames:
        session = metafunc.config.stash[SESSION]
        specs = session.grid(getattr(metafunc.module, "GRID", "default")).specs()
        if session.shard:
            specs = shard(specs, *session.shard)
        metafunc.parametrize("run_spec", specs, ids=[s.id for s in specs])


def run_grid_point(spec: RunSpec, session: Session, record_property) -> None:
    """The body of every grid test (``session.run_point``: train, judge against the baseline,
    record), as pytest outcomes: a point this stack cannot run is a skip with its reason; a run
    that raised fails; so does a verdict the session's policy fails (verdicts.Policy: a
    regression, an improvement, no baseline at all)."""
    result, verdict = session.run_point(spec)
    if result.status == "skipped":  # the row says why; the test is a skip with that reason, never silent
        pytest.skip(f"{spec.id}: skipped: {result.row['status_reason']}")
    record_property("diagnostics_run", progress_line(result.row, verdict))
    if result.status == "error":
        raise AssertionError(f"{spec.id} raised: {result.row['status_reason']}")
    missing = report.missing_fields(result.row)
    assert not missing, f"{spec.id}: incomplete record, empty {missing}"
    failure = session.policy.failure(verdict) if session.judges else None
    if verdict["verdict"] == "new" and session.no_baseline:
        failure = None  # the grid has no baseline at all: said once, before training, and failed once at the end
    assert failure is None, f"{spec.id}: {verdict['verdict']}: {failure}: {verdict['detail']}"
    check = result.row.get("one_process_check")
    # a session that writes the baseline or the noise has none to judge with yet: unjudged passes there
    apart = one_process.failure(check, session.policy.allow_no_baseline or not session.judges) if check else None
    assert apart is None, f"{spec.id}: one process: {check}: {apart}: {result.row.get('one_process_detail')}"


def progress_line(row: dict, verdict: dict) -> str:
    return (f"{row['run_id']:<48} {row['status']:<19} final {float(row.get('final_loss', 'nan')):8.4f}  "
            f"{float(row.get('runtime_s', 'nan')):6.1f}s  {verdict['verdict']}")


@pytest.fixture
def grid_point(diagnostics_session, record_property):
    """Call with the test's RunSpec: runs and checks it (see run_grid_point)."""
    return lambda spec: run_grid_point(spec, diagnostics_session, record_property)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that takes a grid point (``GRID_FIXTURES``) is a grid test, declared or not."""
    for item in items:
        if GRID_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("grid"):
            item.add_marker(pytest.mark.grid)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Whichever process collected grid tests (``grid`` marker) starts the report directory
    (``session.claim``, once per session). Looking (--collect-only) never deletes a report."""
    config = session.config
    if config.option.collectonly or not any(i.get_closest_marker("grid") for i in session.items):
        return
    params = [getattr(getattr(i, "callspec", None), "params", {}) for i in session.items]
    specs = [p["run_spec"] for p in params if isinstance(p.get("run_spec"), RunSpec)]
    try:
        claim(config.stash[SESSION], specs)
    except report.ReportError as e:
        raise pytest.UsageError(str(e)) from None


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
        if (session.report_dir / RESUMED).exists():
            terminalreporter.write_line((session.report_dir / RESUMED).read_text().strip())
        terminalreporter.write_line(f"{len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        terminalreporter.write_line(f"reports: {session.report_dir}/ ({', '.join(report.SCHEMAS)})")
        if (session.report_dir / stability.STABILITY).exists():
            terminalreporter.write_line(stability.summary(report.read_csv(session.report_dir / stability.STABILITY)))


def judged_new(s: Session) -> bool:
    """Whether any run of the session was judged and found no baseline (a suite that judges no
    run against the baseline, the reproducibility checks, never fails for its absence)."""
    path = s.report_dir / report.RUNS
    if not path.exists():
        return False
    runs = report.read_csv(path)
    return "baseline_check" in runs and bool((runs["baseline_check"] == "new").any())


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before any training: a grid with no baseline at all says so once (Session.missing_baseline)."""
    s = session.config.stash.get(SESSION, None)
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if s is not None and s.no_baseline and not is_worker(session.config) and terminal:
        terminal.write_line(s.no_baseline, yellow=True, bold=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    s = config.stash.get(SESSION, None)
    if s is None or is_worker(config):
        return
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if s.no_baseline and exitstatus != pytest.ExitCode.INTERRUPTED and judged_new(s):
        if terminal:
            terminal.ensure_newline()
            terminal.write_line(f"FAILED: {s.no_baseline}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if not started_here(s):
        return
    lines, failed = finish(s, complete=exitstatus != pytest.ExitCode.INTERRUPTED)
    for line in lines:
        if terminal:
            terminal.write_line(line)
    if failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
