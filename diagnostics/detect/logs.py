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
- a console log, what a training script printed (``console.py``: each line's ``name value`` pairs
  or a printed dict), where the file is none of the above.

The records go through ``columns.normalise`` (its module says how columns are found and cells
read); only a step and a loss are needed. What cannot be read is ``LogError``: one line saying what
was found and what is needed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from diagnostics.detect.columns import (  # noqa: F401  (read with the table: logs.LogError, logs.Columns, logs.TABLE)
    NO_COLUMNS,
    TABLE,
    Columns,
    LogError,
    normalise,
)
from diagnostics.detect.console import console_records


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


def read(path: str | Path, cols: Columns = NO_COLUMNS) -> pd.DataFrame:
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
