"""``REPORT_DIR/index.html``: a static page (opens without a server) with the environment, the
runs table (status coloured, sortable by clicking a header), the figures and links to the CSVs;
where the folder holds a ``compare.csv`` (``diagnostics compare`` writes it into the candidate's),
the verdicts, with the configs that could not see the margin at the seeds run."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from . import compare, paths, plots, report, stability

TABLE_COLUMNS = ["run_id", "status", "final_loss", "val_loss", "val_metric", "loss_floor", "divergence_step",
                 "n_loss_spikes", "n_grad_spikes", "runtime_s", "samples_per_s", "peak_rss_mb", "baseline_check",
                 "status_reason"]
ENV_FIRST = ["torch_version", "torchvision_version", "lion_pytorch_version", "python_version", "cuda_version",
             "cudnn_version", "platform", "cpu_model", "available_devices", "git_sha"]

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212121; }
table { border-collapse: collapse; margin: 8px 0 24px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-size: 12px; }
th { background: #f5f5f5; cursor: pointer; user-select: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody td:first-child { white-space: nowrap; }
img { max-width: 100%; border: 1px solid #eee; margin: 8px 0; }
""" + "\n".join(f"td.status-{s} {{ background: {c}; color: white; }}" for s, c in plots.STATUS_COLOUR.items())

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const t = r.cells[col].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); }).forEach(r => body.appendChild(r));
}));
"""


def cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return '<td class="num"></td>'
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def runs_table(runs: pd.DataFrame) -> str:
    cols = [c for c in TABLE_COLUMNS if c in runs.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for r in runs[cols].to_dict("records"):
        cells = "".join(f'<td class="status-{html.escape(str(r[c]))}">{html.escape(str(r[c]))}</td>' if c == "status"
                        else cell(r[c]) for c in cols)
        rows.append(f'<tr class="run">{cells}</tr>')
    return f'<table class="sortable" id="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


VERDICT_COLUMNS = ["run_id", "verdict", "failure", "n_seeds_judged", "mde", "seeds_missing", "detail"]


def verdicts_section(compared: pd.DataFrame) -> list[str]:
    """The verdicts of a compare.csv: counts, then the table, then the blind spots."""
    counts = ", ".join(f"{n} {v}" for v, n in compared["verdict"].value_counts().items())
    cols = [c for c in VERDICT_COLUMNS if c in compared.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = "".join("<tr>" + "".join(cell(r[c]) for c in cols) + "</tr>" for r in compared[cols].to_dict("records"))
    out = ["<h2>Verdicts against the baseline</h2>", f"<p>{html.escape(counts)}</p>",
           f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>']
    blind = compare.blind_spots(compared) if "mde" in compared.columns else pd.DataFrame()
    if len(blind):
        out.append(f"<p>{len(blind)} judged config(s) could not see a {compare.MARGIN:.0%} change at the seeds run "
                   "(mde above the margin): " + html.escape(", ".join(
                       f"{r['run_id']} ({r['mde']:.1%})" for r in blind.to_dict("records"))) + "</p>")
    return out


def env_table(env: pd.DataFrame) -> str:
    kv = dict(zip(env["key"], env["value"].fillna("")))
    keys = [k for k in ENV_FIRST if k in kv] + sorted(k for k in kv if k not in ENV_FIRST)
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th>{cell(str(kv[k]))}</tr>" for k in keys) + "</table>"


def write(report_dir: Path) -> Path:
    """Render the figures into REPORT_DIR/plots/ and write REPORT_DIR/index.html."""
    report_dir = Path(report_dir)
    runs = report.read(report_dir / report.RUNS)
    env_path = report_dir / report.ENV
    figures = plots.plot_runs(report_dir, report_dir / "plots")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(runs["status"].value_counts().items()))
    csvs = [p.name for p in sorted(report_dir.glob("*.csv"))]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Convergence diagnostics</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Convergence diagnostics: {len(runs)} runs</h1><p>{html.escape(counts)}</p>",
        "<p>Data: " + " · ".join(f'<a href="{html.escape(c)}">{html.escape(c)}</a>' for c in csvs) + "</p>",
        "<h2>Runs</h2><p>Click a column header to sort.</p>", runs_table(runs),
    ]
    if (report_dir / paths.COMPARE).exists():
        parts += verdicts_section(report.read(report_dir / paths.COMPARE, required=["run_id", "verdict"]))
    stab_path = report_dir / stability.STABILITY
    if stab_path.exists():
        parts += ["<h2>Stability sweep</h2>", f"<pre>{html.escape(stability.summary(report.read_csv(stab_path)))}</pre>"]
    parts += ["<h2>Figures</h2>"] + [f'<p><img src="plots/{html.escape(f.name)}" alt="{html.escape(f.stem)}"></p>'
                                     for f in figures]
    if env_path.exists():
        parts += ["<h2>Environment</h2>", env_table(report.read(env_path))]
    parts += [f"<script>{SORT_JS}</script></body></html>"]
    out = report_dir / paths.PAGE
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
