"""What a log's records mean: the names its columns are found by (the first present wins,
case-insensitively, ``/``, ``-``, ``.`` and spaces read as ``_``), how a cell reads (blank: not
logged; ``nan``/``inf``: logged non-finite values; anything else not a number: ``LogError``), and
the normalised table the detector judges (``normalise``): a run per run column or per file, a
per-epoch or per-day log counted by its epoch or day, a dated one numbered in time order, a step
logged twice keeping its later line, runs written one after another split apart, a log of
perplexity and no loss judged on the perplexity's logarithm."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diagnostics.errors import DiagnosticsError

# Column names, in order of preference (normalised: lower case, "/", "-", "." and " " -> "_").
STEP_NAMES = ("step", "global_step", "_step", "trainer_global_step", "iteration", "iter", "it", "steps", "num_updates",
              "batch")
LOSS_NAMES = ("loss", "train_loss", "train_loss_step", "training_loss", "train_loss_epoch", "train_lm_loss",
              "lm_loss", "train_train_loss", "loss_step", "trainer_loss", "loss_train", "loss_training",
              "train_total_loss", "total_loss", "loss_total", "train_ce_loss", "ce_loss")
GRAD_NAMES = ("grad_norm", "train_grad_norm", "gradient_norm", "grad_norm_total", "total_grad_norm", "grad_l2_norm",
              "optim_grad_norm", "gnorm", "grad_norm_train", "train_gradient_norm", "gradnorm")
LR_NAMES = ("lr", "learning_rate", "train_learning_rate", "lr_abs", "optim_lr", "lr_adamw", "lr_sgd", "train_lr",
            "lr_group0", "lr_0", "lr_pg0", "learning_rate_group0", "learning_rate_pg0", "lr_train")
RUN_NAMES = ("run_id", "run", "run_name", "name")
# a log that prints its perplexity and no loss: the loss is its logarithm (cross-entropy in nats)
PERPLEXITY_NAMES = ("ppl", "perplexity", "train_ppl", "train_perplexity", "training_perplexity")
# a per-epoch (or per-day) log's counter, where no step column is found and every loss row's value
# is a whole number (a fractional epoch, as the HF Trainer prints it, is no counter)
EPOCH_NAMES = ("epoch", "epochs", "epoch_num", "day", "days")
# a dated log's column (a daily aggregate exported from a dashboard), where there is no counter:
# its rows in time order are numbered 1, 2, ... (every loss row's value a date or time pandas reads)
DATE_NAMES = ("date", "datetime", "timestamp", "time", "wall_time", "ds")
# the normalised table; None = not logged. ``loss_blank``: a training row (it logs a gradient norm or
# an LR) with a blank loss after the run's last logged loss: the loss vanished while the log went
# on (pandas writes a NaN as an empty cell), which the detector judges (detect.Monitor.vanish)
TABLE = ["run_id", "step", "loss", "grad_norm", "lr", "loss_blank"]


class LogError(DiagnosticsError, ValueError):
    """A log that cannot be read; the message is one line: what was found, what is needed."""


@dataclass(frozen=True)
class Columns:
    """Column names given by the user (None: detect)."""

    step: str | None = None
    loss: str | None = None
    grad: str | None = None
    lr: str | None = None


NO_COLUMNS = Columns()  # every column found by its name


def norm(name: str) -> str:
    return re.sub(r"[/\-. ]+", "_", str(name).strip().lower())


def find(columns, wanted: str | None, names: tuple[str, ...], what: str, path: Path, required: bool) -> str | None:
    """The column to use: the one the user named, else the first of ``names`` present."""
    by_norm = {norm(c): c for c in columns}
    if wanted is not None:
        if wanted in columns:
            return wanted
        if norm(wanted) in by_norm:
            return by_norm[norm(wanted)]
        raise LogError(f"{path}: no column {wanted!r} (--{what}-col); found: {', '.join(map(str, columns))}")
    for n in names:
        if n in by_norm:
            return by_norm[n]
    if required:
        raise LogError(f"{path}: no {what} column (looked for {', '.join(names[:4])}, ...; name it with --{what}-col); "
                       f"found: {', '.join(map(str, columns))}")
    return None


def number(text, path: Path, column: str, row: int) -> float | None:
    """A logged cell: None when blank (not logged), else a float (nan/inf allowed)."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise LogError(f"{path}: column {column} has a non-numeric value {text!r} (data row {row})")
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    if s == "":
        return None
    try:
        return float(s)
    except ValueError:
        raise LogError(f"{path}: column {column} has a non-numeric value {s!r} (data row {row})") from None


def epoch_counter(records: list[dict], columns, loss: str) -> str | None:
    """The column of ``EPOCH_NAMES`` that counts a per-epoch log: every row that logs a loss
    logs it as a whole number; None when there is none."""
    by_norm = {norm(c): c for c in columns}
    for name in EPOCH_NAMES:
        column = by_norm.get(name)
        if column is None:
            continue
        values = [r.get(column) for r in records if r.get(loss) not in (None, "")]
        try:
            whole = all(v not in (None, "") and float(v).is_integer() for v in values)
        except (TypeError, ValueError):
            whole = False
        if values and whole:
            return column
    return None


def is_number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def dated(records: list[dict], columns, loss: str) -> list[dict] | None:
    """A dated log's loss rows in time order, each with a ``step`` numbering it (1, 2, ...), by
    the first of ``DATE_NAMES`` whose every value on those rows pandas reads as a date or time (a
    number is none); None when there is none."""
    by_norm = {norm(c): c for c in columns}
    rows = [r for r in records if r.get(loss) not in (None, "")]
    for name in DATE_NAMES:
        column = by_norm.get(name)
        if column is None or not rows:
            continue
        values = [r.get(column) for r in rows]
        if any(isinstance(v, (int, float)) or v in (None, "") or is_number(v) for v in values):
            continue
        try:
            when = pd.to_datetime(pd.Series(values, dtype=str), errors="raise", format="mixed")
        except (ValueError, TypeError, OverflowError):
            continue
        order = sorted(range(len(rows)), key=lambda i: when.iloc[i])
        return [dict(rows[i], step=k) for k, i in enumerate(order, start=1)]
    return None


def from_perplexity(records: list[dict], columns) -> list[dict] | None:
    """The records with a ``loss`` that is the log of the first of ``PERPLEXITY_NAMES`` they
    print, where they print no loss; None where there is no such column. A perplexity that is not
    a positive number is left for ``number`` to refuse (0 or less: a non-finite loss)."""
    by_norm = {norm(c): c for c in columns}
    column = next((by_norm[n] for n in PERPLEXITY_NAMES if n in by_norm), None)
    if column is None:
        return None

    def log(v):
        if v is None or (isinstance(v, str) and not v.strip()) or not is_number(v):
            return v  # not logged, or the cell as it is: its one-line error names it
        return math.log(float(v)) if float(v) > 0 else math.nan
    return [dict(r, loss=log(r.get(column))) for r in records]


def normalise(records: list[dict], path: Path, cols: Columns, run_id: str) -> pd.DataFrame:
    """Records (dicts of column -> raw cell) to the normalised table, rows that logged a loss. A
    step a run logs more than once (a run resumed from an earlier checkpoint logs those steps
    again, and went on from there) keeps its later line; how many were dropped is the table's
    ``attrs["repeated_steps"]``."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    loss = find(columns, cols.loss, LOSS_NAMES, "loss", path, False)
    from_ppl = None if loss else from_perplexity(records, columns)
    if from_ppl is not None:
        records, columns, loss = from_ppl, [*columns, "loss"], "loss"
    step = find(columns, cols.step, STEP_NAMES, "step", path, False)
    numbered_by_date = False
    if step is None:  # a per-epoch or dated log? (else the step column is what is missing)
        step = epoch_counter(records, columns, loss) if loss else None
        by_date = dated(records, columns, loss) if loss and step is None else None
        if by_date is not None:
            records, step, numbered_by_date = by_date, "step", True
            columns = list(dict.fromkeys(k for r in records for k in r))
        step = step or find(columns, None, STEP_NAMES, "step", path, True)
    loss = loss or find(columns, cols.loss, LOSS_NAMES, "loss", path, True)
    grad = find(columns, cols.grad, GRAD_NAMES, "grad", path, False)
    lr = find(columns, cols.lr, LR_NAMES, "lr", path, False)
    run = find(columns, None, RUN_NAMES, "run", path, False)
    rows, blank = [], []
    for i, r in enumerate(records, start=1):
        value = number(r.get(loss), path, loss, i)
        if value is None:  # a row that logged other things (validation, lr only), or a loss that vanished
            try:
                s = number(r.get(step), path, step, i)
                g, rate = (number(r.get(grad), path, grad, i) if grad else None), (number(r.get(lr), path, lr, i) if lr else None)
            except LogError:
                continue
            if s is not None and math.isfinite(s) and (g is not None or rate is not None):
                blank.append(dict(run_id=str(r.get(run) or run_id) if run else run_id, step=int(s), loss=math.nan,
                                  grad_norm=g, lr=rate, loss_blank=True, order=i))
            continue
        s = number(r.get(step), path, step, i)
        row = dict(run_id=str(r.get(run) or run_id) if run else run_id, step=s, loss=value,
                   grad_norm=number(r.get(grad), path, grad, i) if grad else None,
                   lr=number(r.get(lr), path, lr, i) if lr else None, loss_blank=False)
        if s is None or not math.isfinite(s):
            raise LogError(f"{path}: data row {i} logs a loss but no step ({step} is blank)")
        rows.append(dict(row, step=int(s), order=i))
    if not rows:
        raise LogError(f"{path}: no row logs a loss ({loss} is blank everywhere)")
    rows, blank = runs_started_over(rows, blank)
    latest = {(r["run_id"], r["step"]): r for r in rows}  # a step logged again: its later line (a resumed run)
    repeated = len(rows) - len(latest)
    rows = list(latest.values())
    last = {}
    for r in rows:
        last[r["run_id"]] = max(last.get(r["run_id"], r["step"]), r["step"])
    rows += [r for r in blank if r["run_id"] in last and r["step"] > last[r["run_id"]]]
    df = pd.DataFrame(rows, columns=TABLE, dtype=object).astype({"step": int, "loss": float, "loss_blank": bool})
    df = df.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)
    df.attrs["repeated_steps"] = repeated
    df.attrs["runs_started_over"] = sorted({r["run_id"] for r in rows if "#" in r["run_id"]})
    if numbered_by_date:
        df.attrs["read_as"] = "a dated log: its rows in time order numbered 1, 2, ..."
    if from_ppl is not None:
        df.attrs["read_as"] = (df.attrs.get("read_as", "") + "; " if df.attrs.get("read_as") else "") + \
            "a log of perplexity: its loss is the perplexity's logarithm"
    return df


def runs_started_over(rows: list[dict], blank: list[dict]) -> tuple[list[dict], list[dict]]:
    """Runs written one after another into one file without a run column: where a run's step,
    having gone beyond its first step, goes back to it or below, a new run starts (``name#2``,
    ``name#3``, ...; a row without a loss goes with the run it is written in). A step that goes
    back to a later one is a run resumed from a checkpoint, which stays one run. ``order``: a
    row's place in the file."""
    tagged = sorted([(r["order"], r) for r in rows] + [(b["order"], b) for b in blank], key=lambda x: x[0])
    first: dict[str, int] = {}
    top: dict[str, int] = {}
    part: dict[str, int] = {}
    out_rows, out_blank = [], []
    for _, r in tagged:
        run, step = r["run_id"], r["step"]
        if r["loss_blank"]:  # a row without a loss belongs to the run it is written in
            pass
        elif run in first and top[run] > first[run] and step <= first[run]:
            part[run] = part.get(run, 1) + 1
            top[run] = step
        else:
            first.setdefault(run, step)
            top[run] = max(top.get(run, step), step)
        named = dict(r, run_id=run if part.get(run, 1) == 1 else f"{run}#{part[run]}")
        (out_blank if r["loss_blank"] else out_rows).append(named)
    return out_rows, out_blank
