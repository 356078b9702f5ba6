"""Read the training logs users have into one table the detector judges.

Formats, detected from the file (``read``):

- CSV / TSV (any delimiter the csv sniffer finds) and JSON lines, one record per logged step;
- a Hugging Face Trainer ``trainer_state.json`` (``log_history``: training entries carry
  ``loss``; evaluation entries, ``eval_*``, are kept apart);
- a PyTorch Lightning CSVLogger ``metrics.csv`` (training and validation rows interleaved, blank
  cells where a row did not log a column);
- a Weights & Biases history export (``_step`` plus metric columns, or the chart export's
  ``Step`` plus ``<run> - <metric>`` columns, one run per prefix);
- TensorBoard event files (a file or a run folder), read by the ``tensorboard`` package's
  ``EventAccumulator`` (an optional extra: ``pip install tensorboard``);
- an MLflow run folder (its ``metrics/``: a file a metric, lines ``timestamp value step``), and a
  JSON object of metrics as lists (Sacred's ``metrics.json``, or ``{"step": [...], "loss": [...]}``);
- a console log, what a training script printed (``console_records``): each line's ``name value``
  pairs (``iter 100: loss 4.2345``, ``| lm loss: 7.1E+00 | grad norm: 1.2 |``, ``loss=9.1,
  num_updates=100``, ``step:  10  loss:  9.1``, colour codes dropped; a name of several words
  ending in ``loss`` is the loss unless one of them is ``EVAL_WORDS``) or a printed dict
  (``{'loss': 2.3, 'learning_rate': 5e-05}``); lines that log no loss (validation, progress) are left out. A
  console log without a step counter (nor a whole-number epoch) is numbered by its loss lines
  (step 1, 2, ...).

Columns are found by name (``STEP_NAMES``, ``LOSS_NAMES``, ``GRAD_NAMES``, ``LR_NAMES``; the first
present wins, case-insensitively, ``/`` and ``-`` and ``.`` read as ``_``; a per-epoch or per-day log
without a step column is counted by its epoch or day, ``EPOCH_NAMES``, where that is a whole number,
and a dated one, ``DATE_NAMES``, numbered in time order) unless given. Only the step
and the loss are required. A blank cell (or a key absent from a JSON record) means *not logged*
and reads as None; ``nan``, ``inf`` and ``-inf`` are logged non-finite values. Anything else that is
not a number is bad input: ``LogError`` with one line saying what was found and what is needed.
"""

from __future__ import annotations

import csv
import json
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


def normalise(records: list[dict], path: Path, cols: Columns, run_id: str) -> pd.DataFrame:
    """Records (dicts of column -> raw cell) to the normalised table, rows that logged a loss. A
    step a run logs more than once (a run resumed from an earlier checkpoint logs those steps
    again, and went on from there) keeps its later line; how many were dropped is the table's
    ``attrs["repeated_steps"]``."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    step = find(columns, cols.step, STEP_NAMES, "step", path, False)
    numbered_by_date = False
    if step is None:  # a per-epoch or dated log? (else the step column is what is missing)
        loss = find(columns, cols.loss, LOSS_NAMES, "loss", path, False)
        step = epoch_counter(records, columns, loss) if loss else None
        by_date = dated(records, columns, loss) if loss and step is None else None
        if by_date is not None:
            records, step, numbered_by_date = by_date, "step", True
            columns = list(dict.fromkeys(k for r in records for k in r))
        step = step or find(columns, None, STEP_NAMES, "step", path, True)
    loss = find(columns, cols.loss, LOSS_NAMES, "loss", path, True)
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


def read_delimited(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8", errors="strict")
    if not text.strip():
        raise LogError(f"{path}: empty file")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",\t;|")
    except csv.Error:
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    return [{k: v for k, v in r.items() if k is not None} for r in rows]


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LogError(f"{path}: line {i} is not JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise LogError(f"{path}: line {i} is not a JSON object")
            records.append(rec)
    return records


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# a name (letters and underscores, up to four words), then ":" or "=" or spaces, then a number
PAIR = re.compile(r"(?<![A-Za-z0-9_.])([A-Za-z][A-Za-z_]*(?: [A-Za-z][A-Za-z_]*){0,3})['\"]?\s*[:=]?\s*\[?"
                  r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf)(?![A-Za-z0-9_])", re.IGNORECASE)
DICT = re.compile(r"\{[^{}]*\}")
# words that make a printed loss an evaluation's, never the training loss
EVAL_WORDS = {"val", "valid", "validation", "eval", "evaluation", "test", "dev"}


def console_line(line: str) -> dict:
    """The values one printed line logs: a dict literal's numbers where the line prints one, else
    its ``name value`` pairs (the first value of a name wins)."""
    import ast

    line = ANSI.sub("", line)
    for literal in DICT.findall(line):
        try:
            rec = ast.literal_eval(literal)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(rec, dict):
            return {norm(k): v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    rec: dict = {}
    for name, value in PAIR.findall(line):
        key = norm(name)
        rec.setdefault(key, value)
        words = key.split("_")
        if len(words) > 1 and words[-1] == "loss" and not EVAL_WORDS & set(words):  # "train epoch loss": a loss
            rec.setdefault("loss", value)
    return rec


def console_records(text: str, cols: Columns = Columns()) -> list[dict]:
    """A console log's records (module docs): the lines that log its loss (``cols.loss``, else
    the first of ``LOSS_NAMES`` any line logs), each with a ``step``: the step counter most of
    them log (``cols.step``, else one of ``STEP_NAMES``; a loss line without it is left out), or
    where none logs one, the loss line's number (1, 2, ...; also its ``line_number``); [] when no
    line logs a loss."""
    records = [r for r in (console_line(line) for line in text.splitlines()) if r]
    names = [norm(cols.loss)] if cols.loss else LOSS_NAMES
    loss = next((n for n in names if any(n in r for r in records)), None)
    if loss is None:
        return []
    records = [r for r in records if loss in r]
    counters = [norm(cols.step)] if cols.step else STEP_NAMES
    counted = {n: sum(n in r for r in records) for n in counters}
    counter = max(counters, key=lambda n: (counted[n], -counters.index(n)))
    if not counted[counter]:
        counter = None if cols.step else epoch_counter(records, list(dict.fromkeys(k for r in records for k in r)), loss)
        if counter is None:
            return [dict(r, step=i, line_number=i) for i, r in enumerate(records, start=1)]
        return [dict(r, step=r[counter]) for r in records]
    return [dict(r, step=r[counter]) for r in records if counter in r]


def hf_records(state: dict) -> tuple[list[dict], list[dict]]:
    """(training entries, evaluation entries) of a trainer_state.json's log_history."""
    history = state.get("log_history", [])
    train = [e for e in history if "loss" in e]
    evals = [e for e in history if any(str(k).startswith("eval_") for k in e)]
    return train, evals


def wandb_chart_export(df: pd.DataFrame) -> dict[str, list[dict]] | None:
    """W&B chart export: ``Step`` + ``<run> - <metric>`` columns (and __MIN/__MAX), one run per
    prefix; None when the frame is not of that shape."""
    runs: dict[str, dict[str, str]] = {}
    for c in df.columns:
        if " - " in c and not c.endswith(("__MIN", "__MAX")):
            run, metric = c.rsplit(" - ", 1)
            runs.setdefault(run, {})[metric] = c
    if not runs or "Step" not in df.columns:
        return None
    out = {}
    for run, metrics in runs.items():
        out[run] = [dict({"step": r["Step"]}, **{m: r[c] for m, c in metrics.items()}) for r in df.to_dict("records")]
    return out


def read_tensorboard(path: Path) -> list[dict]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise LogError(f"{path}: a TensorBoard event file needs the tensorboard package "
                       "(pip install tensorboard)") from None
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    by_step: dict[int, dict] = {}
    for tag in acc.Tags().get("scalars", []):
        for ev in acc.Scalars(tag):
            by_step.setdefault(int(ev.step), {"step": int(ev.step)})[tag] = float(ev.value)
    if not by_step:
        raise LogError(f"{path}: no scalar in the TensorBoard events")
    return [by_step[s] for s in sorted(by_step)]


def mlflow_metrics(path: Path) -> Path | None:
    """An MLflow run folder's ``metrics`` folder (the run folder itself, or that folder), or None."""
    folder = path if path.name == "metrics" else path / "metrics"
    return folder if folder.is_dir() and any(f.is_file() for f in folder.rglob("*")) else None


def read_mlflow(folder: Path) -> list[dict]:
    """An MLflow run's metrics (one file a metric, named by its path under ``metrics/``; a line
    ``timestamp value step``) as one record per step."""
    by_step: dict[int, dict] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = f.relative_to(folder).as_posix()
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                value, step = float(parts[1]), int(parts[2]) if len(parts) > 2 else i
            except (IndexError, ValueError):
                raise LogError(f"{f}: line {i} is not 'timestamp value step' (an MLflow metric file)") from None
            by_step.setdefault(step, {"step": step})[name] = value
    return [by_step[s] for s in sorted(by_step)]


def json_metrics(state: dict) -> list[dict] | None:
    """A JSON object of metrics as lists, one record per step: Sacred's metrics.json (``{name:
    {"steps": [...], "values": [...]}}``) or columns (``{"step": [...], "loss": [...]}``, lists of
    one length); None when it is neither."""
    series = {k: v for k, v in state.items() if isinstance(v, dict) and isinstance(v.get("values"), list)}
    if series:
        by_step: dict = {}
        for name, v in series.items():
            steps = v.get("steps") if isinstance(v.get("steps"), list) else list(range(1, len(v["values"]) + 1))
            for step, value in zip(steps, v["values"]):
                by_step.setdefault(step, {"step": step})[name] = value
        return [by_step[s] for s in sorted(by_step, key=lambda x: (not isinstance(x, (int, float)), x))]
    columns = {k: v for k, v in state.items() if isinstance(v, list)}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1 or not lengths.pop():
        return None
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def is_tensorboard(path: Path) -> bool:
    if path.is_dir():
        return any("tfevents" in p.name for p in path.rglob("*"))
    return "tfevents" in path.name


def read(path: str | Path, cols: Columns = Columns()) -> pd.DataFrame:
    """Any supported log as the normalised table (module docs); LogError on what cannot be read."""
    path = Path(path)
    if not path.exists():
        raise LogError(f"{path}: no such file")
    run_id = path.stem if path.is_file() else path.name
    if is_tensorboard(path):
        return normalise(read_tensorboard(path), path, cols, path.name if path.is_dir() else path.parent.name)
    if path.is_dir() and mlflow_metrics(path) is not None:
        return normalise(read_mlflow(mlflow_metrics(path)), path, cols,
                         path.parent.name if path.name == "metrics" else path.name)
    if path.is_dir():
        raise LogError(f"{path}: a folder without TensorBoard events or MLflow metrics; give a log file")
    head = path.read_bytes()[:2048].lstrip()
    try:
        if head.startswith(b"{") and path.suffix.lower() == ".json":
            state = json.loads(path.read_text(encoding="utf-8"))
            if "log_history" not in state:
                by_metric = json_metrics(state)
                if by_metric is None:
                    raise LogError(f"{path}: a JSON file without log_history (not a trainer_state.json), nor metrics "
                                   "as lists; use JSON lines, one record per step")
                return normalise(by_metric, path, cols, run_id)
            train, evals = hf_records(state)
            if not train:
                raise LogError(f"{path}: log_history has no training entry with a loss ({len(evals)} eval entries)")
            return normalise(train, path, cols, path.parent.name or run_id)
        if head.startswith(b"{"):
            try:
                return normalise(read_jsonl(path), path, cols, run_id)
            except LogError as e:  # printed dicts (single quotes), not JSON: a console log?
                return as_console(path, cols, run_id, e)
        records = read_delimited(path)
    except UnicodeDecodeError:
        raise LogError(f"{path}: not a text log (CSV, TSV, JSON lines, trainer_state.json, TensorBoard or a "
                       "console log)") from None
    except json.JSONDecodeError as e:
        raise LogError(f"{path}: not valid JSON ({e.msg})") from None
    if not records:
        return as_console(path, cols, run_id, LogError(f"{path}: a header but no rows"))
    chart = wandb_chart_export(pd.DataFrame(records))
    if chart is not None:
        return pd.concat([normalise(r, path, cols, run) for run, r in chart.items()], ignore_index=True)
    try:
        return normalise(records, path, cols, run_id)
    except LogError as e:  # no step or loss column: what a training script printed?
        return as_console(path, cols, run_id, e)


def as_console(path: Path, cols: Columns, run_id: str, error: LogError) -> pd.DataFrame:
    """The file read as a console log, where its lines log a loss; else ``error`` (the reason
    the file is no table), raised."""
    records = console_records(path.read_text(encoding="utf-8", errors="replace"), cols)
    if not records:
        raise error
    table = normalise(records, path, cols, run_id)
    numbered = any("line_number" in r for r in records)
    table.attrs["read_as"] = "a console log" + (" that prints no step: its loss lines numbered 1, 2, ..." if numbered
                                                else "")
    return table


def evaluation_entries(path: str | Path) -> pd.DataFrame:
    """The eval_* entries of a trainer_state.json (kept apart from training), for the record."""
    train, evals = hf_records(json.loads(Path(path).read_text(encoding="utf-8")))
    return pd.DataFrame(evals)
