"""The ``diagnostics`` command (also ``python -m diagnostics``).

Every subcommand calls the same library functions the suites use. Bad input gets one line on
stderr (``diagnostics: error: ...``) and exit status 2; a failing check exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SUITES = Path(__file__).resolve().parent.parent / "suites"
GRID_OPTIONS = ("grid", "models", "optimizers", "schedulers", "warmup", "devices", "precision", "seeds", "steps",
                "size", "lr_scales", "shard", "data_root", "data_dir", "report_dir", "baseline")
SUITE_FILES = {"convergence": "test_convergence.py", "stability": "test_stability.py",
               "reproducibility": "test_reproducibility.py"}


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input in one line instead of usage + error."""

    def error(self, message: str):
        raise UsageError(message)


def add_grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", help="grid preset: smoke, default, nightly, stability (default: the suite's)")
    p.add_argument("--models", help="comma list of: gpt, resnet, resnet18, vit")
    p.add_argument("--optimizers", help="comma list of: adamw, sgd, lion")
    p.add_argument("--schedulers", help="comma list of: constant, step, cosine, cosine_restarts, onecycle")
    p.add_argument("--warmup", help="comma list of: none, linear")
    p.add_argument("--devices", help="auto (default) or a comma list of: cpu, cuda, mps, xpu")
    p.add_argument("--precision", help="comma list of: fp32, bf16")
    p.add_argument("--seeds", help="comma list of integer seeds (default: 0)")
    p.add_argument("--steps", help="optimizer steps per run (default: the grid's)")
    p.add_argument("--size", help="model size preset: tiny, small")
    p.add_argument("--lr-scales", help="comma list of LR multipliers (default: the grid's)")
    p.add_argument("--shard", help="i/N: run the i-th of N deterministic slices of the grid")
    p.add_argument("--data-root", help="real data: torchvision dataset / ImageFolder folder, or a text file")
    p.add_argument("--data-dir", help="where embedded data is written (default: reports/data)")
    p.add_argument("--report-dir", help="where reports go (default: reports/latest)")
    p.add_argument("--baseline", help="baseline runs.csv or folder (default: reports/baselines/<grid>)")
    p.add_argument("--update-baseline", action="store_true", help="write this session's rows into the baseline")
    p.add_argument("--probes", action="store_true",
                   help="gpt: record the max attention logit and output log-partition every 10 steps")


def validate_grid_options(args: argparse.Namespace) -> None:
    """Fail fast, in one line, on what the suite would reject."""
    from . import data, devices
    from .spec import GridOptions, SpecError, parse_shard, resolve_grid

    try:
        devs = devices.resolve(args.devices or "auto")
        resolve_grid(GridOptions(grid=args.grid, models=args.models, optimizers=args.optimizers,
                                 schedulers=args.schedulers, warmup=args.warmup, precision=args.precision,
                                 seeds=args.seeds, steps=args.steps, size=args.size, lr_scales=args.lr_scales,
                                 devices=devs))
        parse_shard(args.shard)
        if args.data_root:
            data.check_root(Path(args.data_root))
    except (SpecError, data.DataError) as e:
        raise UsageError(str(e)) from None


def pytest_args(args: argparse.Namespace, suite: str) -> list[str]:
    out = [str(SUITES / suite), "-p", "no:cacheprovider"]
    for name in GRID_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    out += ["--update-baseline"] if args.update_baseline else []
    out += ["--probes"] if args.probes else []
    out += ["--quiet-runs"] if args.quiet else []
    out += ["-q"] if not any(a.startswith("-v") for a in args.pytest_args) else []
    if args.workers is not None:
        out += ["-n", str(args.workers)]
    if args.k:
        out += ["-k", args.k]
    return out + list(args.pytest_args)


def cmd_run(args: argparse.Namespace) -> int:
    validate_grid_options(args)
    suite = SUITES / SUITE_FILES[args.suite]
    if not suite.exists():
        raise UsageError(f"suite not found at {suite}; run from a checkout (pip install -e .)")
    import pytest

    return int(pytest.main(pytest_args(args, suite.name)))


def cmd_env(args: argparse.Namespace) -> int:
    from . import env
    from .devices import available_devices

    for key, value in sorted(env.capture(available_devices()).items()):
        print(f"{key},{value}")
    return 0


def read_steps_table(path: Path):
    """A user's steps table: run_id, step, loss, grad_norm (lr optional), numeric values."""
    import pandas as pd

    from . import report

    try:
        df = report.read(path, required=["run_id", "step", "loss", "grad_norm"])
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    if df.empty:
        raise UsageError(f"{path}: no rows")
    for col in ("step", "loss", "grad_norm") + (("lr",) if "lr" in df.columns else ()):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if col == "step":
            bad |= values.isna()
        if bad.any():
            i = int(bad.idxmax())
            raise UsageError(f"{path}: column {col} has a non-numeric value {df[col][i]!r} (data row {i + 1})")
        df[col] = values
    df["run_id"] = df["run_id"].astype(str)
    return df


def cmd_detect(args: argparse.Namespace) -> int:
    from . import detect, report

    steps_path = Path(args.steps_csv)
    df = read_steps_table(steps_path)
    out = Path(args.out) if args.out else steps_path.parent / "detect"
    verdicts, events = detect.classify_table(df, loss_floor=args.loss_floor)
    report.write_atomic(out / report.RUNS, report.frame(verdicts, detect.VERDICT_COLUMNS))
    report.write_atomic(out / report.EVENTS, report.frame(events, report.EVENTS_COLUMNS))
    counts = {}
    for v in verdicts:
        counts[v["status"]] = counts.get(v["status"], 0) + 1
    print(f"{len(verdicts)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"wrote {out / report.RUNS} and {out / report.EVENTS}")
    return 0


def names_arg(valid):
    def parse(text: str) -> list[str]:
        from .spec import SpecError, parse_names

        try:
            return list(parse_names(text, tuple(valid), "names"))
        except SpecError as e:
            raise argparse.ArgumentTypeError(str(e).replace("names", "value")) from None
    return parse


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"{n}: must be at least 2")
    return n


def report_dir_arg(text: str) -> Path:
    path = Path(text)
    if not (path / "runs.csv").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a report directory (no runs.csv)")
    return path


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plots, report

    try:
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
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    for p in paths:
        print(p)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import page, report

    try:
        print(page.write(args.report_dir))
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    return 0


def versions_line(report_dir: Path, runs) -> str:
    """torch / CUDA / device of a report, from its env.csv (else its first row)."""
    import pandas as pd

    from . import report

    env = {}
    if (report_dir / report.ENV).exists():
        env = dict(report.read(report_dir / report.ENV).fillna("").itertuples(index=False))
    first = runs.iloc[0].to_dict() if len(runs) else {}
    get = lambda k: env.get(k) or ("" if pd.isna(first.get(k, "")) else first.get(k, ""))  # noqa: E731
    devices = ",".join(sorted(set(runs["device_name"].dropna().astype(str)))) if "device_name" in runs else ""
    return (f"torch {get('torch_version')}, CUDA {get('cuda_version') or '-'}, python {get('python_version')}, "
            f"devices {devices or get('available_devices')}")


def cmd_compare(args: argparse.Namespace) -> int:
    from . import compare, report

    base_dir, cand_dir = Path(args.baseline_dir), Path(args.candidate_dir)
    try:
        need = compare.CONFIG + ["run_id", "seed", "status", "status_reason", "final_loss", "initial_loss",
                                 "weights_sha256", "steps_per_s", "peak_rss_mb", "peak_device_mem_mb"]
        base, cand = (report.read(d / report.RUNS, required=need) for d in (base_dir, cand_dir))
        steps = [report.read(d / report.STEPS, required=["run_id", "step", "loss"]) if (d / report.STEPS).exists()
                 else None for d in (base_dir, cand_dir)]
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    table = compare.compare_reports(base, cand, *steps)
    out = Path(args.out) if args.out else cand_dir
    report.write_atomic(out / "compare.csv", table)
    counts = table["verdict"].value_counts()
    print(f"baseline  {base_dir}: {versions_line(base_dir, base)}")
    print(f"candidate {cand_dir}: {versions_line(cand_dir, cand)}")
    print(f"{len(table)} configs: " + ", ".join(f"{counts[v]} {v}" for v in compare.VERDICTS if v in counts))
    regressions = table[table["regression"].astype(bool)]
    cost = table[table["cost"].fillna("ok") != "ok"]
    for r in regressions.to_dict("records"):
        print(f"REGRESSED {r['run_id']}: {r['verdict']}: {r['detail']}")
    for r in cost.to_dict("records"):
        print(f"COST {r['run_id']}: {r['cost']} (slowdown x{r['slowdown']:.2f}, memory x{r['rss_ratio']:.2f})")
    print(f"wrote {out / 'compare.csv'}")
    failed = len(regressions) > 0 or (args.fail_on_cost and len(cost) > 0)
    return 1 if failed else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from . import report

    try:
        counts = report.merge([Path(d) for d in args.dirs], Path(args.out))
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    print(f"merged {len(args.dirs)} reports into {args.out}: " + ", ".join(f"{n} rows in {k}" for k, n in counts.items()))
    return 0


def float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def build_parser() -> Parser:
    parser = Parser(prog="diagnostics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run a suite's grid through pytest and write reports")
    run.add_argument("--suite", choices=tuple(SUITE_FILES), default="convergence",
                     help="convergence (grid: default), stability (LR sweep; grid: stability) or "
                          "reproducibility (twice-same, resume, DDP, cross-device; grid: default)")
    add_grid_options(run)
    run.add_argument("-n", dest="workers", help="pytest-xdist workers (a number or auto)")
    run.add_argument("-k", help="pytest -k expression to select runs by id")
    run.add_argument("--quiet", action="store_true", help="no progress line per run")
    run.add_argument("pytest_args", nargs="*", help="further pytest arguments, after --")
    run.set_defaults(func=cmd_run)

    det = sub.add_parser("detect", help="classify the runs of any steps table (run_id, step, loss, grad_norm)")
    det.add_argument("steps_csv", help="CSV with columns run_id, step, loss, grad_norm (lr optional)")
    det.add_argument("--out", help="output folder for runs.csv and events.csv (default: detect/ beside the input)")
    det.add_argument("--loss-floor", type=float_arg, default=float("nan"),
                     help="lowest reachable loss, if known (default: unknown, taken as 0)")
    det.set_defaults(func=cmd_detect)

    from .recipes import OPTIMIZERS, SCHEDULERS, WARMUPS

    plot = sub.add_parser("plot", help="figures: lr (schedules), runs (loss curves), compare (two reports)")
    what = plot.add_subparsers(dest="what", required=True, parser_class=Parser)
    lr = what.add_parser("lr", help="LR vs step of the grid's own schedules on one axes")
    lr.add_argument("--schedulers", type=names_arg(SCHEDULERS), default=["onecycle", "cosine"],
                    help="comma list (default: onecycle,cosine, the chapter's exercise)")
    lr.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adamw")
    lr.add_argument("--warmup", type=names_arg(WARMUPS), default=["none"], help="comma list of none, linear")
    lr.add_argument("--steps", type=positive_int, default=200)
    lr.add_argument("--all", action="store_true", help="every scheduler x warmup as small multiples")
    lr.add_argument("--out", required=True, help="PNG file")
    runs = what.add_parser("runs", help="loss curves of a report directory")
    runs.add_argument("report_dir", type=report_dir_arg)
    runs.add_argument("--out", required=True, help="folder for the PNG files")
    cmp_ = what.add_parser("compare", help="baseline vs candidate curves of every config that changed")
    cmp_.add_argument("baseline_dir", type=report_dir_arg)
    cmp_.add_argument("candidate_dir", type=report_dir_arg)
    cmp_.add_argument("--out", required=True, help="folder for the PNG file")
    plot.set_defaults(func=cmd_plot)

    cmp_reports = sub.add_parser("compare", help="compare two report directories: exit 0 nothing regressed, "
                                                 "1 something did, 2 bad input")
    cmp_reports.add_argument("baseline_dir")
    cmp_reports.add_argument("candidate_dir")
    cmp_reports.add_argument("--out", help="folder for compare.csv (default: the candidate's)")
    cmp_reports.add_argument("--fail-on-cost", action="store_true", help="also exit 1 on a slowdown or memory growth")
    cmp_reports.set_defaults(func=cmd_compare)

    mrg = sub.add_parser("merge", help="merge report directories (e.g. shards) into one")
    mrg.add_argument("dirs", nargs="+")
    mrg.add_argument("--out", required=True)
    mrg.set_defaults(func=cmd_merge)

    rep = sub.add_parser("report", help="write REPORT_DIR/index.html (runs table, figures, environment)")
    rep.add_argument("report_dir", type=report_dir_arg)
    rep.set_defaults(func=cmd_report)

    env = sub.add_parser("env", help="print the environment as the reports record it (key,value)")
    env.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(f"diagnostics: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diagnostics: interrupted", file=sys.stderr)
        return 130
