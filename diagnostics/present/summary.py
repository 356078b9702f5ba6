"""A report as Markdown for a CI job summary (``$GITHUB_STEP_SUMMARY``) or a PR comment:
``diagnostics summary REPORT_DIR [--compare COMPARE_CSV]``.

Order: one line of counts (runs by status, configs by verdict), then what needs a reader, failing
first and then changed, then a table naming every run. Verdicts come from ``COMPARE_CSV`` when
given (``diagnostics compare``'s output: its ``failure`` column says what fails), else from each
run's ``baseline_check`` (the suite's own judgement of that run against the baseline).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from diagnostics import report
from diagnostics.detect import STATUS_RANK
from diagnostics.judge.compare import blind_spots
from diagnostics.judge.verdicts import JUDGED, MARGIN, NEEDS_A_LOOK, Policy


def cell(value, fmt: str = "") -> str:
    """A table cell: numbers formatted, NaN empty, pipes and newlines escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = format(value, fmt) if fmt and isinstance(value, (int, float)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    """Markdown table of ``rows`` with (header, key, format) columns."""
    out = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(r.get(k), f) for _, k, f in columns) + " |" for r in rows]
    return out


def counts(series: pd.Series) -> str:
    return ", ".join(f"{n} {k}" for k, n in series.value_counts().sort_index().items())


def markdown(runs: pd.DataFrame, compared: pd.DataFrame | None = None, title: str = "",
             policy: Policy | None = None, margin: float = MARGIN) -> str:
    """The summary (module docs). ``runs``: runs.csv; ``compared``: compare.csv, or None (then
    each run's ``baseline_check`` is its verdict and ``policy``, the session's verdict options,
    says what fails). With compare.csv, the judged configs whose stated ``mde`` is above
    ``margin`` are listed: a change of the margin's size could hide in their noise."""
    policy = policy or Policy()
    runs = runs.assign(outcome=runs["status"].astype(str))
    records = runs.to_dict("records")
    lines = [f"## {title or 'Convergence diagnostics'}", "", f"**{len(runs)} runs**: {counts(runs['outcome'])}"]
    if compared is not None:
        verdicts = compared.fillna({"failure": "", "detail": ""}).to_dict("records")
        lines.append(f"**{len(compared)} configs vs baseline**: {counts(compared['verdict'])}")
        if not compared["verdict"].isin(JUDGED).any():
            lines.append("**Nothing was judged**: no config was compared against a baseline.")
    else:
        verdicts = [dict(r, verdict=str(r.get("baseline_check") or ""), init_verdict=r.get("init_check"), detail="")
                    for r in records]
        for r in verdicts:
            r["failure"] = policy.failure(r) or ""
        checked = [r["verdict"] for r in verdicts if r["verdict"]]
        if checked:
            lines.append(f"**baseline checks**: {counts(pd.Series(checked))}")
    failing = [r for r in verdicts if r["failure"]]
    failing_ids = {str(r["run_id"]) for r in failing}
    failing += [dict(r, verdict="", failure="the run raised") for r in records
                if r["outcome"] == "error" and str(r["run_id"]) not in failing_ids]
    rank = {v: i for i, v in enumerate(NEEDS_A_LOOK)}
    changed = sorted((r for r in verdicts if r["verdict"] in rank and not r["failure"]),
                     key=lambda r: (rank[r["verdict"]], str(r["run_id"])))
    if failing:
        lines += ["", f"### Failing ({len(failing)})", ""]
        lines += table(failing, [("run", "run_id", ""), ("verdict", "verdict", ""), ("why", "failure", ""),
                                 ("detail", "detail", ""), ("status reason", "status_reason", "")])
    if changed:
        lines += ["", f"### Changed, passing ({len(changed)})", ""]
        lines += table(changed, [("run", "run_id", ""), ("verdict", "verdict", ""), ("detail", "detail", "")])
    blind = blind_spots(compared, margin) if compared is not None and "mde" in compared else pd.DataFrame()
    if len(blind):
        lines += ["", f"### Cannot see a {margin:.0%} change at the seeds run ({len(blind)})", "",
                  "Their verdicts hold for changes above the detectable effect; run more seeds to see the margin.", ""]
        lines += table(blind.to_dict("records"), [("run", "run_id", ""), ("verdict", "verdict", ""),
                                                  ("seeds", "n_seeds_judged", ".0f"), ("detectable", "mde", ".1%")])
    ordered = sorted(records, key=lambda r: (-STATUS_RANK.get(r["outcome"], -1), str(r["run_id"])))
    lines += ["", f"### Every run ({len(runs)})", "", "<details><summary>table</summary>", ""]
    lines += table(ordered, [("run", "run_id", ""), ("status", "outcome", ""), ("final loss", "final_loss", ".4g"),
                             ("held-out", "val_metric", ".4g"), ("runtime s", "runtime_s", ".1f"),
                             ("baseline", "baseline_check", ""), ("reason", "status_reason", "")])
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def write(report_dir: Path, compare_csv: Path | None = None, title: str = "", policy: Policy | None = None,
          margin: float = MARGIN) -> str:
    """The summary of a report directory (raises report.ReportError with one line)."""
    runs = report.read(Path(report_dir) / report.RUNS)
    compared = report.read(Path(compare_csv), required=["run_id", "verdict", "failure", "detail"]) \
        if compare_csv else None
    return markdown(runs, compared, title, policy, margin)
