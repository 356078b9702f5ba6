"""CSV schema, writers and readers: the public output (the CSV contract: docs/concepts/output.md).

Writers append whole runs under an exclusive file lock, so pytest-xdist workers can share one
report directory and a crash keeps every run that finished. ``finalize`` sorts the files once the
session is over (stable order whatever the worker layout).
"""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics.detect import STATUS_FIELDS
from diagnostics.errors import DiagnosticsError
from diagnostics.paths import ENV as ENV  # re-exported: paths is their home
from diagnostics.paths import EVENTS as EVENTS
from diagnostics.paths import PAGE as PAGE
from diagnostics.paths import REPRO as REPRO
from diagnostics.paths import RUNS as RUNS
from diagnostics.paths import SEEDS as SEEDS
from diagnostics.paths import STABILITY as STABILITY
from diagnostics.paths import STEPS as STEPS

# the axes a run is defined by beyond its recipe (spec.RunSpec's fields), with the value that
# leaves a run id unchanged; a report written before one existed reads it as this (``read``)
AXIS_DEFAULTS = {"impl": "default", "compile": "none", "attention": "default", "layout": "full", "context": 0,
                 "clip": "none", "accumulation": 1, "parallel": "none"}
IDENTITY = ["run_id", "suite", "model", "optimizer", "scheduler", "warmup", "warmup_steps", "device", "device_name",
            "precision", *AXIS_DEFAULTS, "seed", "lr", "lr_scale", "steps", "batch_size", "model_params", "recipe"]
OUTCOME = [*STATUS_FIELDS, "val_loss", "val_metric", "loss_floor", "max_grad_norm", "weights_sha256"]
COST = ["runtime_s", "steps_per_s", "samples_per_s", "peak_rss_mb", "peak_device_mem_mb", "mem_total_mb",
        "mem_available_mb"]
PROVENANCE = ["data_path", "data_sha256", "torch_version", "torchvision_version", "lion_pytorch_version",
              "python_version", "cuda_version", "cudnn_version", "platform", "cpu_model", "num_threads",
              "deterministic", "git_sha", "started_at", "worker"]
# beyond the contract, appended last
EXTRA = ["model_size", "steps_run", "val_metric_name", "data_name", "baseline_check", "grid", "perturbation",
         "val_samples", "impl_resolved", "init_sha256", "skipped_steps", "tf32", "matmul_precision", "sdpa_backend",
         "driver_version", "nccl_version", "seeded_init_sha256", "init_check",
         # a distributed run (grid.parallel): its world, backend, the dtypes FSDP2 gathered parameters
         # and reduced gradients in as torch resolved them (observed on the collectives), and the
         # check against one process (judge.parallel)
         "world_size", "backend", "param_dtype", "reduce_dtype", "one_process_check", "one_process_detail"]
RUNS_COLUMNS = IDENTITY + OUTCOME + COST + PROVENANCE + EXTRA
# the contract's six, then signals sampled on read steps (every SYNC_EVERY steps; empty elsewhere)
STEPS_COLUMNS = ["run_id", "step", "lr", "loss", "grad_norm", "elapsed_s", "update_ratio", "attn_logit_max",
                 "output_log_z", "grad_scale", "skipped"]  # fp16: the loss scale of the step, 1 if the scaler skipped it
EVENTS_COLUMNS = ["run_id", "step", "kind", "signal", "value", "threshold", "detail"]
ENV_COLUMNS = ["key", "value"]

# the columns that name a config (a grid point up to its seed): compare, calibrate and stability
# key on them. A report written before the ``impl``/``compile``/``attention`` axes existed reads them as these
# defaults (``read``), so older reports and baselines stay comparable.
CONFIG = ["model", "optimizer", "scheduler", "warmup", "device", "precision", *AXIS_DEFAULTS, "lr_scale", "steps",
          "model_size"]

SCHEMAS = {RUNS: RUNS_COLUMNS, STEPS: STEPS_COLUMNS, EVENTS: EVENTS_COLUMNS, ENV: ENV_COLUMNS}
# what a readable report must hold: runs.csv the contract's columns (the EXTRA ones grow with the
# project: a report from before a column existed still reads), the other files their schemas
READ_REQUIRED = {**SCHEMAS, RUNS: IDENTITY + OUTCOME + COST + PROVENANCE}
SORT_KEYS = {RUNS: ["run_id"], STEPS: ["run_id", "step"], EVENTS: ["run_id", "step", "kind"],
             REPRO: ["run_id", "check"]}
FLOAT_FORMAT = "%.17g"  # round-trips every float64 exactly: reports compare bit for bit
# pandas >= 3 parses floats exactly by default (and deprecates the argument); 2.x needs asking
ROUND_TRIP = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


class ReportError(DiagnosticsError, ValueError):
    """A report file that is missing or malformed; the message is one line."""


@contextmanager
def locked(path: Path):
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


OWNER = ".owner"  # in a report directory while a session holds it: who (one line)


@contextmanager
def owned(report_dir: Path, who: str):
    """Hold ``report_dir`` for one session (``diagnostics run``): a second session on the same
    directory raises ReportError naming the first, before it writes or deletes anything. The
    hold is an exclusive ``flock`` on ``.owner.lock`` for the session's lifetime: the kernel
    drops it when the process ends, however it ends, so a crashed session never blocks the next."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    fh = open(report_dir / (OWNER + ".lock"), "a")  # noqa: SIM115 (held open for the whole session)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        holder = (report_dir / OWNER).read_text().strip() if (report_dir / OWNER).exists() else "another session"
        raise ReportError(f"{report_dir} is in use by {holder}: wait for it to finish or choose another "
                          "--report-dir") from None
    try:
        (report_dir / OWNER).write_text(who + "\n")
        yield
    finally:
        (report_dir / OWNER).unlink(missing_ok=True)
        (report_dir / (OWNER + ".lock")).unlink(missing_ok=True)  # still held here: no other session has it
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# Signals of steps.csv whose non-finite values are measurements (a NaN loss is how a run diverges):
# written as "nan", so that an empty cell keeps meaning "not measured" (logs.read tells them apart).
MEASURED = ("lr", "loss", "grad_norm")


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Rows in schema order; a missing value is empty (NaN), never invented. A measured NaN of
    a ``MEASURED`` signal is kept as the text "nan"."""
    df = pd.DataFrame(rows, columns=columns)
    for c in MEASURED:
        if "step" in columns and c in columns and any(c in r for r in rows):  # traces only
            measured_nan = [c in r and isinstance(r[c], float) and r[c] != r[c] for r in rows]
            if any(measured_nan):
                df[c] = df[c].astype(object).where(~pd.Series(measured_nan, index=df.index), "nan")
    return df


def append(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Append rows to a CSV (header written by whoever creates the file), under a lock."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = frame(rows, columns).to_csv(index=False, header=False, float_format=FLOAT_FORMAT)
    with locked(path):
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", encoding="utf-8") as f:
            if new:
                f.write(",".join(columns) + "\n")
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        df.to_csv(f, index=False, float_format=FLOAT_FORMAT)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make a report unreadable to the rest of a team
    os.replace(tmp, path)


def write_env(report_dir: Path, env: dict[str, str]) -> None:
    write_atomic(Path(report_dir) / ENV, pd.DataFrame(sorted(env.items()), columns=ENV_COLUMNS))


# read as text even when they look like numbers ("13.0" must not become 13)
TEXT_COLUMNS = {c: str for c in ("run_id", "weights_sha256", "git_sha", "data_sha256", "torch_version",
                                 "torchvision_version", "lion_pytorch_version", "python_version", "cuda_version",
                                 "cudnn_version", "value", "worker", "driver_version",
                                 "nccl_version", "init_sha256",
                                 # torch releases in changelog.csv and bisect.csv ("2.10" is no 2.1)
                                 "from_version", "to_version", "first_changed", "last_same")}


def read_csv(path: Path) -> pd.DataFrame:
    """pandas.read_csv with exact float round-trip and text ids kept as text; a table of runs or
    configs written before an axis or the ``skipped`` status existed reads as it would be written
    today (``with_axis_defaults``, ``with_skipped_status``). Every reader of a report goes through
    here, so none re-applies them."""
    return with_skipped_status(with_axis_defaults(pd.read_csv(path, **ROUND_TRIP, dtype=TEXT_COLUMNS)))


def records(df: pd.DataFrame) -> list[dict]:
    """``df.to_dict("records")``, the same dicts of Python scalars, built from one object array:
    pandas builds them row by row (an indexer per row), 20-40x slower on the few rows of one
    config, which a comparison of a grid does once per config and side (benchmarks/compare_time.py).
    A nullable column's NA is None, as to_dict gives it."""
    if not len(df):
        return []
    rows = df.to_numpy(dtype=object).tolist()
    if any(isinstance(t, pd.api.extensions.ExtensionDtype) for t in df.dtypes):
        rows = [[None if x is pd.NA else x for x in row] for row in rows]
    cols = list(df.columns)
    return [dict(zip(cols, row)) for row in rows]


def with_axis_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """A table of runs or configs written before an axis of ``AXIS_DEFAULTS`` existed, with it
    filled as its default (each after ``precision`` and the axes before it); other tables pass
    unchanged."""
    missing = [c for c in AXIS_DEFAULTS if c not in df.columns]
    if "precision" not in df.columns or not missing:
        return df
    df = df.copy()
    after = "precision"
    for column in AXIS_DEFAULTS:
        if column in missing:
            df.insert(df.columns.get_loc(after) + 1, column, AXIS_DEFAULTS[column])
        after = column
    return df


# how reports written before ``skipped`` was a status said it: an ``error`` row whose reason
# starts so (``read`` reads such a row as ``skipped``, the prefix dropped)
OLD_SKIP_PREFIX = "skipped: "


def with_skipped_status(df: pd.DataFrame) -> pd.DataFrame:
    """A table of runs from before ``skipped`` was a status, its skips as ``skipped`` rows."""
    if "status" not in df.columns or "status_reason" not in df.columns:
        return df
    old = (df["status"].astype(str) == "error") & df["status_reason"].astype(str).str.startswith(OLD_SKIP_PREFIX)
    if not old.any():
        return df
    df = df.copy()
    df.loc[old, "status"] = "skipped"
    df.loc[old, "status_reason"] = df.loc[old, "status_reason"].astype(str).str.removeprefix(OLD_SKIP_PREFIX)
    return df


def read(path: Path, required: list[str] | None = None) -> pd.DataFrame:
    """Read a report CSV; raise ReportError (one line) when it is missing, empty, unparsable
    or lacks required columns."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: no such file")
    try:
        df = read_csv(path)
    except pd.errors.EmptyDataError:
        raise ReportError(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise ReportError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in (required or READ_REQUIRED.get(path.name, [])) if c not in df.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def finalize(report_dir: Path) -> None:
    """Sort each appended file by its key, atomically. Rows are never dropped."""
    for name, keys in SORT_KEYS.items():
        path = Path(report_dir) / name
        if path.exists():
            with locked(path):
                df = read_csv(path)
                write_atomic(path, df.sort_values(keys, kind="stable"))


def remove_locks(report_dir: Path) -> None:
    """Remove the lock files of a finished session (``locked`` creates them; nothing holds them
    once every process of the session is done)."""
    for lock in Path(report_dir).glob("*.lock"):
        if lock.name != OWNER + ".lock":  # ``owned`` removes its own when it lets go
            lock.unlink(missing_ok=True)


def reset(report_dir: Path) -> None:
    """Remove the files a session writes (start of a new session in the same directory)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    for name in (RUNS, STEPS, EVENTS, ENV, REPRO, SEEDS, STABILITY, PAGE):
        for p in (report_dir / name, report_dir / (name + ".lock")):
            p.unlink(missing_ok=True)


# columns every run that trained must fill (an ``error`` row needs only identity + reason)
REQUIRED = ["run_id", "model", "optimizer", "scheduler", "warmup", "device", "precision", "seed", "lr", "steps",
            "batch_size", "model_params", "recipe", "status", "status_reason", "weights_sha256", "runtime_s",
            "steps_per_s", "samples_per_s", "peak_rss_mb", "mem_total_mb", "mem_available_mb", "data_path",
            "data_sha256", "torch_version", "python_version", "platform", "num_threads", "deterministic",
            "started_at"]
# ... and a run that did not diverge has losses too (a diverged one may have none that are finite)
REQUIRED_LOSSES = ["initial_loss", "final_loss", "val_loss", "val_metric"]


def missing_fields(row: dict) -> list[str]:
    """Required columns a runs.csv row leaves empty."""
    def empty(v):
        return v is None or v == "" or (isinstance(v, float) and v != v)
    required = REQUIRED + ([] if str(row.get("status", "")).startswith("diverged") else REQUIRED_LOSSES)
    return [c for c in required if empty(row.get(c))]


def merge(dirs: list[Path], out: Path) -> dict[str, int]:
    """Merge report directories (e.g. shards) into ``out``: runs, steps, events and repro
    results concatenated and sorted, env.csv keys united (values that differ joined with " | ").
    Tables derived from the runs (seeds.csv, stability.csv) are the caller's to recompute from the
    merged runs. Refuses, with one line, mixed schemas, a run present twice, and an ``out`` that
    already holds a report."""
    out = Path(out)
    if (out / RUNS).exists():
        raise ReportError(f"{out} already holds a report (runs.csv); choose an empty --out")
    merged: dict[str, pd.DataFrame] = {}
    for name in (RUNS, STEPS, EVENTS, REPRO):
        frames = []
        for d in dirs:
            path = Path(d) / name
            if name == RUNS or path.exists():
                frames.append((path, read(path)))
        for path, df in frames[1:]:
            if list(df.columns) != list(frames[0][1].columns):
                raise ReportError(f"{path} has columns {list(df.columns)} unlike {frames[0][0]}: mixed schemas")
        if frames:
            merged[name] = pd.concat([df for _, df in frames], ignore_index=True)
    runs = merged[RUNS]
    key = [c for c in ("run_id", "steps", "model_size") if c in runs.columns]
    dup = runs[runs.duplicated(key, keep=False)]
    if not dup.empty:
        raise ReportError(f"run {dup.iloc[0]['run_id']} appears in more than one report: refusing to merge duplicates")
    for name, df in merged.items():
        write_atomic(out / name, df.sort_values(SORT_KEYS[name], kind="stable"))
    env: dict[str, list[str]] = {}
    for d in dirs:
        if (Path(d) / ENV).exists():
            for k, v in read(Path(d) / ENV).fillna("").itertuples(index=False):
                env.setdefault(k, [])
                if str(v) not in env[k]:
                    env[k].append(str(v))
    write_env(out, {k: " | ".join(v) for k, v in env.items()})
    return {name: len(df) for name, df in merged.items()}


def config_key(values) -> tuple:
    """A config key with numbers normalised (so 1 and 1.0, "200" and 200 match: a column of
    numbers and names, such as ``clip``'s "none" and "1", reads as text where it mixes them)."""
    return tuple(key_value(v) for v in values)


def key_value(v):
    """One cell of a config key: a number as a float, anything else as text; a missing number
    (NaN) as the text "nan", so that keys with one compare equal (NaN is not equal to itself)."""
    try:
        x = float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else float(str(v))
    except ValueError:
        return str(v)
    return "nan" if math.isnan(x) else x
