"""``REPORT_DIR/index.html``: a static page (opens without a server), in reading order: the
verdict and status counts, then what needs attention (every run that failed, changed or did not
converge, with its reason and the smallest change its config could have seen), then the runs
table (compact, status coloured, sortable by clicking a header), the verdicts of a
``compare.csv`` where the folder holds one (``diagnostics compare`` writes it into the
candidate's), the figures, and the environment once, in its own section."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from diagnostics import paths, report
from diagnostics.judge import compare, stability, verdicts
from diagnostics.present import plots

TABLE_COLUMNS = ["run_id", "status", "baseline_check", "final_loss", "val_loss", "val_metric", "divergence_step",
                 "n_loss_spikes", "n_grad_spikes", "runtime_s", "peak_rss_mb"]
# a run's baseline check that needs no reader's attention
QUIET_CHECKS = ("identical", "equivalent", "not judged", "skipped")
ATTENTION_COLUMNS = ["run_id", "status", "verdict", "reason", "mde"]
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
        out.append(f"<p>{len(blind)} judged config(s) could not see a {verdicts.MARGIN:.0%} change at the seeds run "
                   "(mde above the margin): " + html.escape(", ".join(
                       f"{r['run_id']} ({r['mde']:.1%})" for r in blind.to_dict("records"))) + "</p>")
    return out


def mde_by_run(report_dir: Path, runs: pd.DataFrame) -> dict[str, float]:
    """The smallest relative change each run's config could have seen: compare.csv's ``mde``
    where the folder has one, else the baseline's calibrated ``mde_1`` (one seed) of its grid."""
    if (report_dir / paths.COMPARE).exists():
        compared = report.read(report_dir / paths.COMPARE, required=["run_id", "verdict"])
        if "mde" in compared:
            return dict(zip(compared["run_id"], compared["mde"]))
    from diagnostics.judge import baseline

    out = {}
    for grid, rows in runs.groupby("grid") if "grid" in runs else []:
        tol_path = baseline.directory(str(grid)) / paths.TOLERANCES
        if not tol_path.exists():
            continue
        tol = baseline.Baseline.load(tol_path.parent)
        for r in rows.to_dict("records"):
            t = tol.tolerance(r)
            if t is not None and "mde_1" in t:
                out[r["run_id"]] = t["mde_1"]
    return out


def attention(runs: pd.DataFrame, mde: dict[str, float]) -> pd.DataFrame:
    """The runs a reader must look at, worst first: a baseline check that is not a clean pass
    (QUIET_CHECKS) or whose seeded init changed, or a status other than converged; each with its
    reason."""
    from diagnostics.detect import STATUS_RANK

    rows = []
    for r in runs.to_dict("records"):
        check = str(r.get("baseline_check", "") if pd.notna(r.get("baseline_check")) else "")
        if r.get("init_check") == verdicts.INIT_CHANGED:
            check = f"{check}, {verdicts.INIT_CHANGED}" if check else verdicts.INIT_CHANGED
        elif r["status"] == "converged" and (not check or check in QUIET_CHECKS):
            continue
        rows.append(dict(run_id=r["run_id"], status=r["status"], verdict=check, reason=r.get("status_reason", ""),
                         mde=mde.get(r["run_id"], math.nan), rank=STATUS_RANK.get(r["status"], 0)))
    out = pd.DataFrame(rows, columns=ATTENTION_COLUMNS + ["rank"])
    return out.sort_values(["rank", "run_id"], ascending=[False, True], kind="stable")[ATTENTION_COLUMNS]


def summary_section(runs: pd.DataFrame, mde: dict[str, float]) -> list[str]:
    """The top of the page: the counts, then what needs attention (or that nothing does)."""
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(runs["status"].value_counts().items()))
    checks = runs["baseline_check"].dropna() if "baseline_check" in runs else pd.Series(dtype=str)
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(checks.value_counts().items()))
    out = [f"<p><b>Statuses:</b> {html.escape(statuses)}"
           + (f" &nbsp; <b>Baseline checks:</b> {html.escape(verdicts)}" if verdicts else "") + "</p>"]
    need = attention(runs, mde)
    if need.empty:
        return out + ["<p id='attention'>Nothing needs attention: every run converged and every baseline check "
                      "passed.</p>"]
    head = "".join(f"<th>{c}</th>" for c in ATTENTION_COLUMNS)
    body = "".join("<tr>" + "".join(f'<td class="status-{html.escape(str(r[c]))}">{html.escape(str(r[c]))}</td>'
                                    if c == "status" else cell(r[c]) for c in ATTENTION_COLUMNS) + "</tr>"
                   for r in need.to_dict("records"))
    return out + [f"<h2>Needs attention ({len(need)})</h2>",
                  "<p>Runs that failed, changed or did not converge, worst first; mde: the smallest relative change "
                  "the config could have seen.</p>",
                  f'<table id="attention"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>']


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
    csvs = [p.name for p in sorted(report_dir.glob("*.csv"))]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Convergence diagnostics</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Convergence diagnostics: {len(runs)} runs</h1>",
        *summary_section(runs, mde_by_run(report_dir, runs)),
        "<h2>Runs</h2><p>Click a column header to sort; each run's reason is in runs.csv "
        "(<code>status_reason</code>). Data: "
        + " · ".join(f'<a href="{html.escape(c)}">{html.escape(c)}</a>' for c in csvs) + "</p>", runs_table(runs),
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


# explain's findings (explain.csv) as HTML: the release and changelog pages, and explain.html
EXPLAIN_COLUMNS = [("family", "family"), ("phase", "phase"), ("op", "op"), ("finding", "finding"), ("step", "first_step"),
                ("module", "module"), ("frames", "frames"), ("reproducer", "repro"), ("detail", "detail")]


def explain_section(table: pd.DataFrame) -> list[str]:
    """HTML of explain's findings, a section per transition: its why-line, then a row per root
    (family x phase) with where it ran and its reproducer, then how many downstream rows follow."""
    from diagnostics.release.explain import DOWNSTREAM, ROOTS, summary

    out = []
    for transition, t in table.groupby("transition", sort=False):
        roots = t[t["finding"].isin(ROOTS)]
        out.append(f"<h3>{html.escape(str(transition) or 'explain')}</h3><p>{html.escape(summary(t))}</p>")
        if len(roots):
            head = "".join(f"<th>{html.escape(k)}</th>" for k, _ in EXPLAIN_COLUMNS)
            body = "".join("<tr>" + "".join(cell(r.get(c, "")) for _, c in EXPLAIN_COLUMNS) + "</tr>"
                           for r in roots.to_dict("records"))
            out.append(f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
        downstream = t[t["finding"] == DOWNSTREAM]
        if len(downstream):
            out.append(f"<p>{len(downstream)} downstream rows in {downstream['family'].nunique()} families "
                       "(the ops each root's change reached; explain.csv).</p>")
    return out


def write_explain(table: pd.DataFrame, path: Path, title: str = "Why the bits changed") -> Path:
    """``explain.html``: ``explain_section`` as a page of its own (``diagnostics explain``, ``release``)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f'<p>Data: <a href="{paths.EXPLAIN}">{paths.EXPLAIN}</a></p>', *explain_section(table),
             f"<script>{SORT_JS}</script></body></html>"]
    Path(path).write_text("\n".join(parts), encoding="utf-8")
    return Path(path)
