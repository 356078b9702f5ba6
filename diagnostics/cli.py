"""The ``diagnostics`` command (also ``python -m diagnostics``).

Every subcommand calls the same library functions the suites use. Bad input gets one line on
stderr (``diagnostics: error: ...``) and exit status 2; a failing check exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diagnostics import options, paths
from diagnostics.errors import DiagnosticsError, UsageError
from diagnostics.judge import verdicts

SUITES = Path(__file__).resolve().parent.parent / "suites"
SUITE_FILES = {"convergence": "test_convergence.py", "stability": "test_stability.py",
               "reproducibility": "test_reproducibility.py"}


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input in one line instead of usage + error."""

    def error(self, message: str):
        raise UsageError(message)


def add_grid_options(p: argparse.ArgumentParser) -> None:
    options.add(p, options.GRID_OPTIONS + options.SESSION_OPTIONS + options.VERDICT_OPTIONS)


def grid_of(args: argparse.Namespace):
    """The resolved grid the options select (raises SpecError / ValueError with one line)."""
    from diagnostics.grid.spec import resolve_grid

    return resolve_grid(options.grid_options(lambda k: getattr(args, k, None)))


def validate_grid_options(args: argparse.Namespace) -> None:
    """Fail fast, in one line, on what the suite would reject."""
    from diagnostics.grid import data
    from diagnostics.grid.spec import parse_init_dir, parse_shard

    get = lambda k: getattr(args, k, None)  # noqa: E731
    try:
        grid_of(args)
        parse_shard(args.shard)
        parse_init_dir(getattr(args, "init_dir", None))
        if args.data_root:
            data.check_root(Path(args.data_root))
        options.policy(get)
    except ValueError as e:  # a foreign library's, on bad input
        raise UsageError(str(e)) from None


def pytest_args(args: argparse.Namespace, suite: str) -> list[str]:
    out = [str(SUITES / suite), "-p", "no:cacheprovider"]
    get = lambda k: getattr(args, k, None)  # noqa: E731
    out += options.forward(get, options.GRID_OPTIONS + options.SESSION_OPTIONS + options.VERDICT_OPTIONS
                           + options.RESUME_OPTIONS)
    out += ["--quiet-runs"] if args.quiet else []
    out += ["-q"] if not any(a.startswith("-v") for a in args.pytest_args) else []
    if args.workers is not None:
        out += ["-n", str(xdist_workers(args.workers))]
    if args.k:
        out += ["-k", args.k]
    return out + list(args.pytest_args)


def cmd_run(args: argparse.Namespace) -> int:
    validate_grid_options(args)
    suite = SUITES / SUITE_FILES[args.suite]
    if not suite.exists():
        raise UsageError(f"suite not found at {suite}; run from a checkout (pip install -e .)")
    import datetime as dt
    import os

    import pytest

    from diagnostics import report, session

    who = (f"`diagnostics run` (pid {os.getpid()}, started {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC: "
           f"{' '.join(sys.argv[1:])})")
    report_dir = Path(args.report_dir or options.DEFAULT_REPORT_DIR)
    with report.owned(report_dir, who):
        if not args.resume:
            session.refuse_unfinished(report_dir)  # before pytest starts: one line, nothing deleted
        return int(pytest.main(pytest_args(args, suite.name)))


def xdist_workers(value: str) -> str:
    """``-n``: a number, ``auto`` (xdist: one per CPU core) or ``gpus`` (every visible GPU times
    DIAGNOSTICS_WORKERS_PER_GPU, pinned round-robin; devices.gpu_workers)."""
    from diagnostics.grid import devices

    if value != "gpus":
        return value
    return str(devices.gpu_workers())  # a bad DIAGNOSTICS_WORKERS_PER_GPU: UsageError


def workers_for(threads: int | None, workers: str | None) -> str | None:
    """xdist workers for a session whose CPU runs use ``threads`` intra-op threads each: cores //
    threads workers, so the cores are not oversubscribed (that made it ~5x slower here)."""
    import os

    if threads is None or workers is None:
        return workers
    n = os.cpu_count() if not str(workers).isdigit() else int(workers)
    return str(max(1, min(n, (os.cpu_count() or 1) // threads))) if n > 1 else workers


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Reference run (written as the baseline), one rerun per perturbation, then tolerances.csv
    and envelope.csv beside the baseline (calibrate.py)."""
    from diagnostics.judge import baseline, calibrate, compare
    from diagnostics.run import perturb

    validate_grid_options(args)
    grid = grid_of(args)
    names = (list(perturb.default_for(grid.devices)) if args.perturbations is None
             else [n.strip() for n in args.perturbations.split(",") if n.strip()])
    bad = [n for n in names if n not in perturb.PERTURBATIONS]
    if bad or not names:
        raise UsageError(f"--perturbations {args.perturbations!r}: valid names are {', '.join(perturb.PERTURBATIONS)}")
    target = baseline.directory(grid.name, args.baseline)
    if not args.init_dir:  # the reference runs' initial weights become the baseline's seed checkpoints
        args.init_dir = str(target / baseline.INIT)

    def session_command(name: str, changes: dict, extra: list[str]) -> list[str]:
        threads = changes.pop("threads", None)
        sub = argparse.Namespace(**{**vars(args), **changes, "workers": workers_for(threads, args.workers)})
        return [sys.executable, "-m", "pytest", *pytest_args(sub, SUITE_FILES["convergence"]), *extra]

    ref, perturbed = calibrate.run_sessions(grid, names, Path(args.work_dir) / grid.name, args.perturb_seeds,
                                            args.resume, session_command)
    tol, env = calibrate.from_sessions(ref, perturbed, compare.CONFIG, verdicts.MARGIN, verdicts.ALPHA)
    calibrate.write(target, ref, tol, env)
    print("\n".join(calibrate.summary_lines(tol, names, target, verdicts.MARGIN)))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from diagnostics.grid.devices import available_devices
    from diagnostics.run import env

    for key, value in sorted(env.capture(available_devices()).items()):
        print(f"{key},{value}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    """Statuses and events for any training logs (logs.read: CSV/TSV, JSON lines, HF
    trainer_state.json, Lightning metrics.csv, W&B export, TensorBoard, MLflow, a console log)."""
    import pandas as pd

    from diagnostics import detect, report
    from diagnostics.detect import logs

    cols = logs.Columns(args.step_col, args.loss_col, args.grad_col, args.lr_col)
    tables = []
    for path in args.logs:
        table = logs.read(path, cols)
        if table.attrs.get("read_as"):
            print(f"{path}: read as {table.attrs['read_as']}")
        if table.attrs.get("runs_started_over"):
            print(f"{path}: its step starts over {len(table.attrs['runs_started_over'])} time(s): read as runs of their "
                  f"own ({', '.join(table.attrs['runs_started_over'])})")
        if table.attrs.get("repeated_steps"):
            print(f"{path}: {table.attrs['repeated_steps']} step(s) logged again (a resumed run?): the later line of each "
                  "kept")
        if len(args.logs) > 1 and table["run_id"].nunique() == 1:
            table["run_id"] = str(path)  # one run per file: the file names it
        tables.append(table)
    df = pd.concat(tables, ignore_index=True)
    first = Path(args.logs[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "detect"
    verdicts, events = detect.classify_table(df, loss_floor=args.loss_floor)
    report.write_atomic(out / report.RUNS, report.frame(verdicts, detect.STATUS_COLUMNS))
    report.write_atomic(out / report.EVENTS, report.frame(events, report.EVENTS_COLUMNS))
    logged = [c for c in ("grad_norm", "lr") if df[c].notna().any()]
    print(f"read {int((~df['loss_blank']).sum())} points of {df['run_id'].nunique()} run(s): step, loss"
          + "".join(f", {c}" for c in logged) + ("" if logged else " (no gradient norm or LR logged: the rules use the loss)"))
    for v in verdicts:
        print(f"{v['run_id']}: {v['status']} ({v['status_reason']})")
    print(f"wrote {out / report.RUNS} and {out / report.EVENTS}")
    return 0


def names_arg(valid):
    def parse(text: str) -> list[str]:
        from diagnostics.grid.spec import SpecError, parse_names

        try:
            return list(parse_names(text, tuple(valid), "names"))
        except SpecError as e:
            raise argparse.ArgumentTypeError(str(e).replace("names", "value")) from None
    return parse


def int_at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum`` (spec.parse_positive_int's rule)."""
    from diagnostics.grid.spec import SpecError, parse_positive_int

    def parse(text: str) -> int:
        try:
            return parse_positive_int(text, "", minimum)
        except SpecError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("-- ")) from None
    return parse


def report_dir_arg(text: str) -> Path:
    path = Path(text)
    if not (path / paths.RUNS).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a report directory (no {paths.RUNS})")
    return path


def cmd_plot(args: argparse.Namespace) -> int:
    from diagnostics.present import plots

    if args.what == "lr":
        if args.all:
            paths = [plots.plot_lr_all(args.optimizer, args.steps, Path(args.out))]
        else:
            paths = [plots.plot_lr(args.schedulers, args.optimizer, args.warmup, args.steps, Path(args.out))]
    elif args.what == "runs":
        paths = plots.plot_runs(args.report_dir, Path(args.out))
    else:
        paths = plots.plot_compare(args.baseline_dir, args.candidate_dir, Path(args.out))
        if not paths:
            print("no config changed: nothing to plot")
    for p in paths:
        print(p)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from diagnostics.present import page

    print(page.write(args.report_dir))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from diagnostics.present import summary

    try:
        policy, margin = options.policy(lambda k: getattr(args, k, None))
        print(summary.write(args.report_dir, args.compare, args.title, policy, margin))
    except ValueError as e:  # a foreign library's, on bad input
        raise UsageError(str(e)) from None
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from diagnostics import options, report
    from diagnostics.judge import compare

    base_dir, cand_dir = Path(args.baseline_dir), Path(args.candidate_dir)
    try:
        policy, margin = options.policy(lambda k: getattr(args, k))
        base, cand, steps, tol, env = compare.load_pair(base_dir, cand_dir, args.tolerances)
    except ValueError as e:  # a foreign library's, on bad input
        raise UsageError(str(e)) from None
    print(f"baseline  {base_dir}: {compare.versions_line(base_dir, base)}")
    print(f"candidate {cand_dir}: {compare.versions_line(cand_dir, cand)}")
    empty = [f"{name} {d} holds no runs" for name, d, df in (("baseline", base_dir, base), ("candidate", cand_dir, cand))
             if df.empty]
    if empty:
        print(f"FAILED: {'; '.join(empty)}: nothing was judged")
        return 1
    if compare.same_environment(base, cand):
        print("control: both sides ran in the same environment (software and devices): differences are run to run, "
              "not a release's")
    table = compare.compare_reports(base, cand, *steps, tolerances=tol, envelope=env, margin=margin, policy=policy)
    out = Path(args.out) if args.out else cand_dir
    report.write_atomic(out / paths.COMPARE, table)
    print(f"noise: {compare.noise_line(table, tol)}; margin {margin:.0%}; family-wise alpha {verdicts.ALPHA:g}")
    counts = table["verdict"].value_counts()
    print(f"{len(table)} configs: " + ", ".join(f"{counts[v]} {v}" for v in verdicts.VERDICTS if v in counts))
    for r in table[table["verdict"] == "changed"].to_dict("records"):
        print(f"changed {r['run_id']}: {r['detail']}")
    for line in table.attrs.get("together", []):
        print(f"MOVED TOGETHER {line}")
    init = table[table["init_verdict"] == verdicts.INIT_CHANGED]
    if len(init):
        print(f"INIT_CHANGED: torch's seeded initialisation gives other weights for {len(init)} configs "
              f"({', '.join(sorted(set(init['model'].astype(str) + '-' + init['model_size'].astype(str))))}); "
              "their runs are judged from the baseline's seed checkpoints where it has them")
    blind = compare.blind_spots(table, margin)
    if len(blind):
        print(f"{len(blind)} judged configs cannot see a {margin:.0%} change at the seeds run (mde above the margin): "
              + ", ".join(f"{r['run_id']} ({r['mde']:.1%})" for r in blind.head(8).to_dict("records"))
              + (" ..." if len(blind) > 8 else ""))
    cost = table[table["cost"].fillna("ok") != "ok"]
    for r in cost.to_dict("records"):
        print(f"COST {r['run_id']}: {r['cost']} (slowdown x{r['slowdown']:.2f}, memory x{r['rss_ratio']:.2f})")
    failed = compare.failures(table)
    for line in failed:
        print(f"FAILED {line}")
    print(f"wrote {out / paths.COMPARE}")
    return 1 if failed or (args.fail_on_cost and len(cost) > 0) else 0


def release_sessions(args: argparse.Namespace, versions: list[str]):
    """The cached environments and the grid sessions of ``release`` / ``bisect``."""
    from diagnostics import release

    for v in versions:
        release.check_version(v)
    validate_grid_options(args)
    grid_args = options.forward(lambda k: getattr(args, k, None), options.GRID_OPTIONS)
    if not args.grid:
        grid_args = ["--grid", "changelog" if args.func is cmd_changelog else "release", *grid_args]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pip_log = open(Path(args.out) / "pip.log", "a")  # noqa: SIM115 (open for the whole command)
    envs = release.Environments(Path(args.envs_dir), pip_log, keep=getattr(args, "keep_envs", None))
    return release.Sessions(envs, grid_args, Path(args.out), args.workers)


def kept_sessions(args: argparse.Namespace):
    """``bisect --sessions DIR``: the sessions a changelog kept in DIR (each version's runs.csv
    there, one line where one is missing; their ``why`` reads DIR/explain.csv); nothing is trained,
    so no grid option but --grid applies (the grid: the first session's)."""
    from diagnostics import release, report

    given = [o for o in options.forward(lambda k: getattr(args, k, None), options.GRID_OPTIONS)
             if o.startswith("--") and o not in ("--grid", "--devices")]
    if given:
        raise UsageError(f"bisect --sessions judges the sessions as they were trained: {', '.join(given)} cannot "
                         "apply (give only --grid)")
    sessions = release.KeptSessions(Path(args.sessions))
    for v in args.versions:
        sessions.run(v)
    if not args.grid:
        grids = report.read(sessions.run(args.versions[0]) / report.RUNS, ["grid"])["grid"].dropna().unique()
        args.grid = str(grids[0]) if len(grids) else "changelog"
    args.no_measure_noise = True  # nothing is trained here: committed or given noise, else none
    return sessions


def release_noise(args: argparse.Namespace, sessions, base: str):
    """What the release commands judge with (``release.noise_for``), said in one line."""
    from diagnostics import release

    grid = grid_of(argparse.Namespace(**{**vars(args), "grid": args.grid or sessions.grid_args[1]}))
    noise = release.noise_for(sessions, base, grid.name, grid.specs(), args.tolerances,
                              measure=not args.no_measure_noise)
    print(f"noise: {noise.source}", flush=True)
    return noise


def cmd_release(args: argparse.Namespace) -> int:
    """BASE and CANDIDATE trained from the same initial weights, then compared (exits as compare),
    and their traces explained (OUT/explain.csv)."""
    from diagnostics import release, report
    from diagnostics.present import page
    from diagnostics.release import explain

    if str(Path(args.base).resolve()) == str(Path(args.candidate).resolve()):
        raise UsageError(f"release {args.base} {args.candidate}: one version twice compares a report with itself; "
                         "give two versions (a control is `diagnostics compare` of two runs in one environment)")
    sessions = release_sessions(args, [args.base, args.candidate])
    base, cand = sessions.run(args.base), sessions.run(args.candidate)
    noise = release_noise(args, sessions, args.base)
    compare_args = argparse.Namespace(**{**vars(args), "baseline_dir": str(base), "candidate_dir": str(cand),
                                         "fail_on_cost": False,
                                         "tolerances": str(noise.path) if noise.path else None})
    code = cmd_compare(compare_args)
    why = release.explained(base, cand, f"{args.base} -> {args.candidate}", sessions, (args.base, args.candidate))
    report.write_atomic(Path(args.out) / paths.EXPLAIN, why)
    page.write_explain(why, Path(args.out) / paths.EXPLAIN_PAGE, f"Why the bits changed: torch {args.base} -> {args.candidate}")
    print(f"why: {explain.summary(why)} ({Path(args.out) / paths.EXPLAIN})")
    for d in (base, cand):
        try:
            page.write(d)
        except Exception as e:  # a figure that cannot be drawn must not hide the verdicts
            print(f"release: no page for {d}: {e}")
    print(f"release: reports {base} and {cand}; pages {base / 'index.html'} and {cand / 'index.html'}")
    return code


def cmd_bisect(args: argparse.Namespace) -> int:
    """The first release at which each config's verdict against the first one changed."""
    from diagnostics import release

    if len(args.versions) < 2:
        raise UsageError("bisect needs at least two torch versions, oldest first")
    sessions = kept_sessions(args) if args.sessions else release_sessions(args, args.versions)
    noise = release_noise(args, sessions, args.versions[0])
    try:
        policy, margin = options.policy(lambda k: getattr(args, k, None))
        table = release.bisect(args.versions, sessions, noise, margin, not args.fail_on_change,
                               sessions.why if args.sessions else None)
    except ValueError as e:  # a foreign library's, on bad input
        raise UsageError(str(e)) from None
    from diagnostics import report

    report.write_atomic(Path(args.out) / paths.BISECT, table)
    moved = table[table["first_changed"] != ""]
    print(f"{len(table)} configs: {len(moved)} changed between {args.versions[0]} and {args.versions[-1]}")
    for r in moved.to_dict("records"):
        print(f"{r['run_id']}: first {r['verdict']} at {r['first_changed']} (same at {r['last_same']})"
              + (f"; why: {r['why']}" if r.get("why") else ""))
    failed = release.failing(table, policy)
    for r in failed:
        print(f"FAILED {r['verdict'].upper()} {r['run_id']} at {args.versions[-1]}: {policy.failure(r)}")
    print(f"wrote {Path(args.out) / paths.BISECT}")
    return 1 if failed else 0


def rebisect(out: Path, versions: list[str], noise, margin: float) -> None:
    """OUT/bisect.csv over every release the changelog in OUT holds, searched in the sessions kept
    there as ``bisect --sessions`` searches them (nothing trained), so a changelog that grows keeps a
    whole bisect; said and left as it was where a release has no session in OUT."""
    from diagnostics import release, report

    kept = release.KeptSessions(out)
    absent = [v for v in versions if not (kept.report_dir(v) / report.RUNS).is_file()]
    if absent:
        print(f"{paths.BISECT} not rewritten: {out} holds no session of {', '.join(absent)}")
        return
    table = release.bisect(versions, kept, noise, margin, True, kept.why)
    report.write_atomic(out / paths.BISECT, table)
    moved = table[table["first_changed"] != ""]
    print(f"bisected {len(versions)} releases from the kept sessions: {len(moved)} of {len(table)} configs changed "
          f"beyond noise or in status since {versions[0]} ({out / paths.BISECT})")


def cmd_changelog(args: argparse.Namespace) -> int:
    """Every consecutive pair of the given releases judged: DIR/changelog.csv, .md and its page."""
    import pandas as pd

    from diagnostics import release, report
    from diagnostics.present import changelog
    from diagnostics.release import explain

    if len(args.versions) < 2:
        raise UsageError("changelog needs at least two torch versions (or wheels), oldest first")
    cands = [release.candidate(v) for v in args.versions]
    twice = [c.label for i, c in enumerate(cands) if c.label in [d.label for d in cands[:i]]]
    if twice:
        raise UsageError(f"changelog: {', '.join(twice)} given twice (give each version once; a control is "
                         "`diagnostics compare` of two sessions of one version)")
    out = Path(args.out)
    committed = {}  # an earlier changelog in OUT: extended, never shrunk (changelog.extend)
    for name in (paths.CHANGELOG, paths.EXPLAIN):
        if (out / name).exists():
            try:
                committed[name] = explain.read(out) if name == paths.EXPLAIN else changelog.read(out)
                changelog.transitions_of(committed[name])
            except (report.ReportError, ValueError, KeyError, pd.errors.ParserError) as e:
                raise UsageError(f"{out / name} is not a changelog this command can extend ({e}): move it away or "
                                 "choose another --out") from None
    sessions = release_sessions(args, args.versions)
    tol = release_noise(args, sessions, args.versions[0])
    try:
        _, margin = options.policy(lambda k: getattr(args, k, None))

        explanations: list = []

        def write(table):
            report.write_atomic(out / paths.CHANGELOG, changelog.extend(committed.get(paths.CHANGELOG), table))
            if explanations:
                report.write_atomic(out / paths.EXPLAIN, changelog.extend(committed.get(paths.EXPLAIN),
                                                                          pd.concat(explanations, ignore_index=True)))

        table = release.changelog(cands, sessions, tol, margin, on_transition=write, explanations=explanations)
    except ValueError as e:  # a foreign library's, on bad input
        raise UsageError(str(e)) from None
    write(table)
    explained = pd.concat(explanations, ignore_index=True) if explanations else None
    for r in changelog.counts(table, changelog.builds_of(out, args.versions), explained).to_dict("records"):
        print(f"{r['from_version']} -> {r['to_version']}: {r['identical']} identical, {r['equivalent']} bits within "
              f"noise, {r['beyond_noise']} beyond noise, {r['not_judged']} not judged"
              + (f"; bits changed in {r['bits_changed_in']}" if r["bits_changed_in"] else "")
              + (f"; build: {r['build_change']}" if r["build_change"] else "")
              + (f"; why: {r['why']}" if r["why"] else ""))
    whole = changelog.read(out)
    if committed:
        print(f"extended the changelog in {out}: {len(changelog.releases_of(whole))} releases "
              f"({', '.join(changelog.releases_of(whole))})")
    rebisect(out, changelog.releases_of(whole), tol, margin)
    page = changelog.write(out, whole)
    print(f"wrote {out / paths.CHANGELOG}, {out / paths.EXPLAIN}, {out / paths.CHANGELOG_MD} and {page}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    """The numerics trace of the grid's families in this environment: OUT/trace.csv, and where
    this machine's CPU capability is above the pinned one (``explain.PINNED``), OUT/trace-avx2.csv
    under it (eager families only: inductor chooses the vector ISA of its generated code by
    itself, and its compile is most of a trace's time)."""
    import json
    import os
    import subprocess
    import time

    from diagnostics.grid import spec
    from diagnostics.release import explain, numerics
    from diagnostics.run import env, parallel, train

    validate_grid_options(args)
    try:
        specs = grid_of(args).specs()
        init_dir = spec.parse_init_dir(args.init_dir)
    except ValueError as e:  # a foreign library's, on bad input
        raise UsageError(str(e)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.repro:
        return trace_repro(args.repro, specs, Path(args.data_dir), init_dir, out)
    pinned = os.environ.get(explain.PINNED_TRACE_ENV) == "1"
    name = explain.pinned_name(explain.PINNED) if pinned else numerics.TRACE

    def skip(s):
        return (train.unsupported(s) or ("compiled: traced at the native capability only" if pinned and
                                         s.compile != "none" else "")
                or (parallel.unsupported(s, Path(args.data_dir)) if s.parallel != "none" else ""))

    t0 = time.perf_counter()
    table, cost = numerics.trace(specs, Path(args.data_dir), init_dir, args.trace_steps, skip=skip)
    numerics.write(table, out / name)
    seconds = time.perf_counter() - t0
    capability = env.cpu_capability()
    print(f"trace: {len(cost)} families, {len(table)} ops in {seconds:.1f} s (CPU capability {capability or 'unknown'})"
          f" -> {out / name}")
    meta = dict(families=len(cost), ops=len(table), seconds=round(seconds, 2), capability=capability,
                family_seconds={k: round(v, 2) for k, v in cost.items()})
    (out / (name.removesuffix(".csv") + ".json")).write_text(json.dumps(meta, indent=1) + "\n")
    above = capability.lower() not in ("", "default", explain.PINNED)
    if not pinned and above and any(s.device == "cpu" for s in specs):
        print(f"trace: again under ATEN_CPU_CAPABILITY={explain.PINNED} (one capability for every release)")
        done = subprocess.run([sys.executable, "-m", "diagnostics", *args.argv],
                              env=dict(os.environ, ATEN_CPU_CAPABILITY=explain.PINNED, **{explain.PINNED_TRACE_ENV: "1"}))
        if done.returncode != 0:
            print(f"trace: the trace under {explain.PINNED} failed (exit {done.returncode})")
            return done.returncode
    return 0


def trace_repro(where: str, specs, data_dir: Path, init_dir, out: Path) -> int:
    """``trace --repro FAMILY:STEP:PHASE:SEQ`` (or ``...:PHASE:OP#K``, the K-th call of OP in that
    step's phase): the reproducer of one traced op; prints its path."""
    from diagnostics.release import numerics, reproducer

    try:
        family, step, phase, at = where.split(":", 3)
        op, _, nth = at.rpartition("#") if "#" in at else (None, "", at)
        step, seq = int(step), int(nth)
    except ValueError:
        raise UsageError(f"--repro {where!r} is not FAMILY:STEP:PHASE:SEQ or FAMILY:STEP:PHASE:OP#K (e.g. "
                         "gpt-adamw-cpu-fp32:1:forward:12, gpt-adamw-cpu-fp32:1:forward:aten::addmm#0)") from None
    spec = numerics.families(specs).get(family)
    if spec is None:
        raise UsageError(f"--repro: no family {family!r} in this grid")
    print(reproducer.capture(spec, data_dir, init_dir, step, phase, seq, out, op=op or None))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Where two traces part, op by op: OUT/explain.csv, OUT/explain.html and a line per root finding."""
    from diagnostics.present import page
    from diagnostics.release import explain

    table = explain.explain(Path(args.a), Path(args.b), transition=f"{args.a} -> {args.b}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    explain.write(table, out / paths.EXPLAIN)
    page.write_explain(table, out / paths.EXPLAIN_PAGE)
    roots = table[table["finding"].isin(explain.ROOTS)]
    print(f"{table['family'].nunique()} families differ; {len(roots)} root findings")
    for r in roots.head(args.limit).to_dict("records"):
        print(f"{r['finding']}: {r['op']} ({r['family']}, {r['phase']}, step {r['first_step']})"
              + (f": {r['detail']}" if r["detail"] else ""))
    if len(roots) > args.limit:
        print(f"... and {len(roots) - args.limit} more in {out / paths.EXPLAIN}")
    print(f"why: {explain.summary(table)}")
    print(f"wrote {out / paths.EXPLAIN} and {out / paths.EXPLAIN_PAGE}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from diagnostics import report, session

    counts = report.merge([Path(d) for d in args.dirs], Path(args.out))
    counts |= session.write_derived(Path(args.out), report.read(Path(args.out) / report.RUNS))
    print(f"merged {len(args.dirs)} reports into {args.out}: " + ", ".join(f"{n} rows in {k}" for k, n in counts.items()))
    return 0


def float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


# --------------------------------------------------------------------------------------------
# the subcommands: each one's own arguments, then the table that declares them all
# --------------------------------------------------------------------------------------------

WORKERS_HELP = "pytest-xdist workers: a number, auto (one per core) or gpus (GPUs x DIAGNOSTICS_WORKERS_PER_GPU)"


def run_arguments(p: Parser) -> None:
    p.add_argument("--suite", choices=tuple(SUITE_FILES), default="convergence",
                   help="convergence (grid: default), stability (LR sweep; grid: stability) or "
                        "reproducibility (twice-same, resume, DDP, cross-device; grid: default)")
    add_grid_options(p)
    options.add(p, options.RESUME_OPTIONS)
    p.add_argument("-n", dest="workers", help=WORKERS_HELP)
    p.add_argument("-k", help="pytest -k expression to select runs by id")
    p.add_argument("--quiet", action="store_true", help="no progress line per run")
    p.add_argument("pytest_args", nargs="*", help="further pytest arguments, after --")


def calibrate_arguments(p: Parser) -> None:
    from diagnostics.run.perturb import DEFAULT, REPEATS

    add_grid_options(p)
    p.add_argument("--perturbations", default=None,
                   help=f"comma list of arithmetic-only perturbations (default: {','.join(DEFAULT)}, and "
                        f"{','.join(REPEATS)} on a device other than the CPU: reruns that measure "
                        "nondeterministic kernels)")
    p.add_argument("--perturb-seeds", type=int_at_least(1), default=2,
                   help="how many of the grid's seeds (the first ones) are rerun under each perturbation: each "
                        "adds one noise sample per perturbation and config (default: %(default)s)")
    p.add_argument("--work-dir", default=str(paths.CALIBRATION_DIR),
                   help="where the sessions' reports go (a folder per grid; default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="reuse sessions of an interrupted calibration whose "
                                                         "report is complete")
    p.add_argument("-n", dest="workers", help=WORKERS_HELP)


def detect_arguments(p: Parser) -> None:
    p.add_argument("logs", nargs="+", help="log files (or a TensorBoard run folder); step and loss are required, "
                                           "grad_norm and lr used when logged")
    p.add_argument("--out", help="output folder for runs.csv and events.csv (default: detect/ beside the first log)")
    for what in ("step", "loss", "grad", "lr"):
        p.add_argument(f"--{what}-col", help=f"the {what} column's name (default: found by name)")
    p.add_argument("--loss-floor", type=float_arg, default=float("nan"),
                   help="lowest reachable loss, if known (default: unknown, taken as 0)")


def plot_arguments(p: Parser) -> None:
    from diagnostics.grid.recipes import OPTIMIZERS, SCHEDULERS, WARMUPS

    what = p.add_subparsers(dest="what", required=True, parser_class=Parser)
    lr = what.add_parser("lr", help="LR vs step of the grid's own schedules on one axes")
    lr.add_argument("--schedulers", type=names_arg(SCHEDULERS), default=["onecycle", "cosine"],
                    help="comma list (default: onecycle,cosine, the chapter's exercise)")
    lr.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adamw")
    lr.add_argument("--warmup", type=names_arg(WARMUPS), default=["none"], help="comma list of none, linear")
    lr.add_argument("--steps", type=int_at_least(2), default=200)
    lr.add_argument("--all", action="store_true", help="every scheduler x warmup as small multiples")
    lr.add_argument("--out", required=True, help="PNG file")
    runs = what.add_parser("runs", help="loss curves of a report directory")
    runs.add_argument("report_dir", type=report_dir_arg)
    runs.add_argument("--out", required=True, help="folder for the PNG files")
    cmp_ = what.add_parser("compare", help="baseline vs candidate curves of every config that changed")
    cmp_.add_argument("baseline_dir", type=report_dir_arg)
    cmp_.add_argument("candidate_dir", type=report_dir_arg)
    cmp_.add_argument("--out", required=True, help="folder for the PNG file")


def compare_arguments(p: Parser) -> None:
    p.add_argument("baseline_dir")
    p.add_argument("candidate_dir")
    p.add_argument("--out", help="folder for compare.csv (default: the candidate's)")
    p.add_argument("--fail-on-cost", action="store_true", help="also exit 1 on a slowdown or memory growth")
    p.add_argument("--tolerances", help="tolerances.csv (or its folder) measured by calibrate "
                                        "(default: the one beside BASELINE_DIR's runs.csv)")
    options.add(p)


def merge_arguments(p: Parser) -> None:
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", required=True)


def report_arguments(p: Parser) -> None:
    p.add_argument("report_dir", type=report_dir_arg)


def release_arguments(p: Parser, versions: str) -> None:
    """The arguments of release (``versions``: "pair"), bisect and changelog ("many")."""
    if versions == "pair":
        p.add_argument("base", help="torch version (e.g. 2.14.1), a torch wheel file or a folder of wheels")
        p.add_argument("candidate", help="torch version (e.g. 2.15.0), a torch wheel file or a folder of wheels")
    else:
        p.add_argument("versions", nargs="+", help="torch versions, wheel files or folders of wheels, oldest first")
    options.add(p, options.GRID_OPTIONS + options.VERDICT_OPTIONS)
    p.add_argument("--out", required=True, help="folder for the reports, compare.csv / bisect.csv / changelog.csv, "
                                                "seed weights")
    p.add_argument("--envs-dir", default=str(paths.RELEASE_ENVS_DIR),
                   help="where the per-version environments are kept (default: %(default)s)")
    p.add_argument("--tolerances", help="tolerances.csv (or its folder) to judge with (default: the grid's committed "
                                        "noise, reports/baselines/GRID/tolerances.csv, else measured in the first "
                                        "version's environment by calibrate into OUT/noise)")
    p.add_argument("--no-measure-noise", action="store_true",
                   help="where no noise is committed or given, judge without it (a config whose bits changed is "
                        "then unjudged, never beyond noise) instead of measuring it")
    p.add_argument("-n", dest="workers", help="pytest-xdist workers per session (a number or auto)")


def bisect_arguments(p: Parser) -> None:
    release_arguments(p, "many")
    p.add_argument("--sessions", metavar="DIR",
                   help="search the sessions a changelog kept in DIR (DIR/torch-VERSION/runs.csv, e.g. "
                        "reports/releases) instead of training: nothing is built, trained or traced, the why of each "
                        "first change is read from DIR/explain.csv (a consecutive pair the changelog judged)")


def changelog_arguments(p: Parser) -> None:
    release_arguments(p, "many")
    p.add_argument("--keep-envs", type=int_at_least(1), default=4,
                   help="environments kept at once (4-7 GB each): the least recently used go first, rebuilt on "
                        "demand (default: %(default)s)")


def trace_arguments(p: Parser) -> None:
    from diagnostics.release.numerics import TRACE_STEPS

    options.add(p, options.GRID_OPTIONS)
    p.add_argument("--out", required=True, help="folder for trace.csv (a session's report folder)")
    p.add_argument("--init-dir", help="seed checkpoint folder the families start from (as the session's runs)")
    p.add_argument("--data-dir", default=str(paths.DATA_DIR), help="embedded data folder (default: %(default)s)")
    p.add_argument("--trace-steps", type=int_at_least(1), default=TRACE_STEPS,
                   help="training steps traced per family (default: %(default)s: the first creates the optimizer's "
                        "state, the later ones update it)")
    p.add_argument("--repro", metavar="FAMILY:STEP:PHASE:SEQ",
                   help="instead of the trace: the reproducer of the op at that place of a family's trace, or "
                        "of the K-th call of an op in that step's phase (FAMILY:STEP:PHASE:OP#K) "
                        "(OUT/repro_<op>.py and .pt: its inputs, the op alone, the hash of what it gives)")


def explain_arguments(p: Parser) -> None:
    p.add_argument("a", help="the first session's folder (trace.csv, env.csv) or a trace.csv")
    p.add_argument("b", help="the second session's folder or trace.csv")
    p.add_argument("--out", default=".", help="folder for explain.csv (default: the current one)")
    p.add_argument("--limit", type=int_at_least(1), default=20, help="findings printed (default: %(default)s)")


def summary_arguments(p: Parser) -> None:
    p.add_argument("report_dir", type=report_dir_arg)
    p.add_argument("--compare", help="compare.csv from `diagnostics compare` (default: each run's baseline_check)")
    p.add_argument("--title", default="", help="heading (default: Convergence diagnostics)")
    options.add(p, options.VERDICT_OPTIONS[1:])  # without --compare: which baseline checks count as failing


def no_arguments(p: Parser) -> None:
    pass


RELEASE_DEFAULTS = dict(shard=None, data_root=None)
# name, what it does (--help), its arguments, the function that does it, fixed values that function reads
COMMANDS = (
    ("run", "run a suite's grid through pytest and write reports", run_arguments, cmd_run, {}),
    ("calibrate", "measure per-config tolerances: the grid as the baseline, then reruns that change only the "
                  "arithmetic; writes tolerances.csv beside it", calibrate_arguments, cmd_calibrate,
     dict(quiet=True, k=None, pytest_args=[], suite="convergence", probes=False)),
    ("detect", "statuses and events for any training log: CSV/TSV, JSON lines, HF trainer_state.json, Lightning "
               "metrics.csv, W&B export, TensorBoard, MLflow, a console log", detect_arguments, cmd_detect, {}),
    ("plot", "figures: lr (schedules), runs (loss curves), compare (two reports)", plot_arguments, cmd_plot, {}),
    ("compare", "compare two report directories: exit 0 nothing regressed, 1 something did, 2 bad input",
     compare_arguments, cmd_compare, {}),
    ("merge", "merge report directories (e.g. shards) into one", merge_arguments, cmd_merge, {}),
    ("report", "write REPORT_DIR/index.html (runs table, figures, environment)", report_arguments, cmd_report, {}),
    ("release", "did torch CANDIDATE change convergence against BASE? Each trains the grid (default: release) in its "
                "own cached environment, then compare", lambda p: release_arguments(p, "pair"), cmd_release,
     RELEASE_DEFAULTS),
    ("bisect", "the first of the given torch releases at which each config's verdict against the first changed "
               "(binary search)", bisect_arguments, cmd_bisect, RELEASE_DEFAULTS),
    ("changelog", "every consecutive pair of the given torch releases judged: DIR/changelog.csv, changelog.md and "
                  "index.html (default grid: changelog)", changelog_arguments, cmd_changelog, RELEASE_DEFAULTS),
    ("trace", "the numerics trace of the grid's config families: every aten op of their first steps, hashed "
              "(OUT/trace.csv)", trace_arguments, cmd_trace, RELEASE_DEFAULTS),
    ("explain", "where two traces (two releases' sessions) part, op by op: changed kernels, decompositions, "
                "arguments, schedules (OUT/explain.csv)", explain_arguments, cmd_explain, {}),
    ("summary", "Markdown for a CI job summary or a PR comment: counts, failing and changed configs first, then "
                "every run", summary_arguments, cmd_summary, {}),
    ("env", "print the environment as the reports record it (key,value)", no_arguments, cmd_env, {}),
)


def build_parser() -> Parser:
    """Every subcommand of ``COMMANDS``, each with ``--plugins`` (the grid's commands have it
    among their grid options)."""
    parser = Parser(prog="diagnostics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    plugin_option = [o for o in options.GRID_OPTIONS if o.flag == "--plugins"]
    for name, helptext, arguments, func, defaults in COMMANDS:
        p = sub.add_parser(name, help=helptext)
        arguments(p)
        if "--plugins" not in p._option_string_actions:
            options.add(p, plugin_option)
        p.set_defaults(func=func, **defaults)
    return parser


def load_plugins(argv: list[str]) -> None:
    """``--plugins`` is read before the parser is built, so that ``--help`` and the checks of
    every option know what the plugins register (entry-point plugins load in any case)."""
    from diagnostics.grid import plugins

    value = None
    for i, arg in enumerate(argv):
        if arg == "--plugins" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--plugins="):
            value = arg.split("=", 1)[1]
    plugins.load(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        load_plugins(argv)
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except DiagnosticsError as e:  # bad input or a refusal, from anywhere in the package: one line
        print(f"diagnostics: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diagnostics: interrupted", file=sys.stderr)
        return 130
