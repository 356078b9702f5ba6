"""The convergence changelog of torch (``diagnostics changelog V1 ... Vn --out DIR``): what
``release.changelog`` judged, written for readers. ``DIR/changelog.csv`` holds one row per
(from version, to version, config); this module adds ``DIR/changelog.md`` (per transition: how
many configs kept every bit, changed bits within noise, moved beyond noise or went unjudged, and
on which paths) and ``DIR/index.html`` with a configs x transitions picture coloured by verdict.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from . import compare, paths, report, summary

FIGURE, MARKDOWN = paths.CHANGELOG_FIGURE, paths.CHANGELOG_MD
# verdict colours of the picture: bits kept, bits within noise, beyond noise, nothing judged
VERDICT_COLOUR = compare.VERDICT_COLOUR


def build_change(a: dict, b: dict) -> str:
    """What changed in how torch was built between two sessions' env.csv (env.BUILD_LINES),
    e.g. "onednn: Intel(R) MKL-DNN v3.7.1 ... -> ... v3.10.2 ..."; "" when nothing did or
    either side did not record it."""
    from .env import BUILD_LINES

    changes = []
    for key in BUILD_LINES:
        x, y = str(a.get(key) or ""), str(b.get(key) or "")
        if x and y and x != y:
            changes.append(f"{key.removeprefix('torch_build_')}: {x.split(' (Git')[0]} -> {y.split(' (Git')[0]}")
    return "; ".join(changes)


def counts(table: pd.DataFrame, builds: dict[str, dict] | None = None,
           explained: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per transition: how many configs kept every bit (identical), changed bits within noise
    (equivalent), moved beyond noise (changed, regressed, improved, status_changed) or could not
    be judged (skipped on either side, missing, new, unjudged); which axes changed bits; given
    each version's env.csv (``builds``: version -> key -> value), what changed in its build and
    its CPU capability; and, given explain.csv's rows (``explained``), why: the ops the traces
    name (``explain.summary``)."""
    from . import explain

    builds = builds or {}
    out = []
    for (a, b), t in table.groupby(["from_version", "to_version"], sort=False):
        bits = t[~t["verdict"].isin(compare.BITS_KEPT)]
        judged_bits = bits[bits["verdict"].isin(compare.JUDGED)]
        within = t["verdict"].isin(compare.WITHIN_NOISE)
        out.append(dict(
            from_version=a, to_version=b, configs=len(t), identical=int(t["verdict"].isin(compare.BITS_KEPT).sum()),
            equivalent=int((within & ~t["verdict"].isin(compare.BITS_KEPT)).sum()),
            beyond_noise=int(t["verdict"].isin(compare.BEYOND_NOISE).sum()),
            not_judged=int((~t["verdict"].isin(compare.JUDGED)).sum()),
            bits_changed_in=paths_of(judged_bits), beyond_noise_in=paths_of(t[t["verdict"].isin(compare.BEYOND_NOISE)]),
            build_change=build_change(builds.get(str(a), {}), builds.get(str(b), {})),
            cpu_capability=capability_change(builds.get(str(a), {}), builds.get(str(b), {})),
            why="" if explained is None else explain.summary(
                explained[explained["transition"] == f"{a} -> {b}"], bits_changed=not judged_bits.empty),
        ))
    return pd.DataFrame(out)


def capability_change(a: dict, b: dict) -> str:
    """The CPU capabilities two sessions dispatched to: "AVX2", or "AVX2 -> AVX512" where they
    differ ("" where either did not record it)."""
    x, y = str(a.get("cpu_capability") or ""), str(b.get("cpu_capability") or "")
    if not (x and y):
        return ""
    return x if x == y else f"{x} -> {y}"


def machine(builds: dict[str, dict]) -> str:
    """The machine a changelog was made on, from its sessions' env.csv: CPU model, flags, and
    the capability each release dispatched to."""
    if not builds:
        return ""
    first = next(iter(builds.values()))
    caps = ", ".join(f"{v} {b.get('cpu_capability') or '?'}" for v, b in builds.items())
    return (f"Made on {first.get('cpu_model') or 'an unrecorded CPU'} ({first.get('cpu_count_logical', '?')} logical "
            f"cores; CPU flags: {first.get('cpu_flags') or 'not recorded'}); CPU capability per release: {caps}.")


def paths_of(rows: pd.DataFrame) -> str:
    """The paths a set of configs shares, in words: "gpt, resnet: fp16; compile=inductor" style,
    the values of each axis that occur (an axis at its default everywhere is left out)."""
    if rows.empty:
        return ""
    parts = [",".join(sorted(rows["model"].astype(str).unique()))]
    for axis in ("optimizer", "scheduler", "precision", "impl", "compile", "attention", "layout", "context"):
        values = sorted(rows[axis].astype(str).unique())
        if values != [str(report.AXIS_DEFAULTS.get(axis))]:
            parts.append(f"{axis}={','.join(values)}")
    return " ".join(parts)


def markdown(table: pd.DataFrame, builds: dict[str, dict] | None = None,
             explained: pd.DataFrame | None = None) -> str:
    """The changelog as Markdown: the machine, the transitions table (with why, where traced),
    then each config beyond noise."""
    c = counts(table, builds, explained)
    lines = [f"## Convergence changelog: {len(c)} transitions, {table['run_id'].nunique()} configs", ""]
    if machine(builds or {}):
        lines += [machine(builds or {}), ""]
    lines += summary.table(c.to_dict("records"), [
        ("from", "from_version", ""), ("to", "to_version", ""), ("identical", "identical", ""),
        ("bits within noise", "equivalent", ""), ("beyond noise", "beyond_noise", ""), ("not judged", "not_judged", ""),
        ("bits changed in", "bits_changed_in", ""), ("beyond noise in", "beyond_noise_in", ""),
        ("build change", "build_change", ""), ("CPU capability", "cpu_capability", ""), ("why (changed ops)", "why", "")])
    beyond = table[table["verdict"].isin(compare.BEYOND_NOISE)]
    if len(beyond):
        lines += ["", f"### Beyond noise ({len(beyond)})", ""]
        lines += summary.table(beyond.to_dict("records"), [
            ("from", "from_version", ""), ("to", "to_version", ""), ("config", "run_id", ""), ("verdict", "verdict", ""),
            ("Δ final loss", "delta_final_loss", ".3g"), ("mde", "mde", ".1%"), ("detail", "detail", "")])
    return "\n".join(lines) + "\n"


def figure(table: pd.DataFrame, path: Path) -> Path:
    """Configs (rows) x transitions (columns), each cell coloured by its verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    transitions = list(dict.fromkeys(f"{a}→{b}" for a, b in zip(table["from_version"], table["to_version"])))
    configs = sorted(table["run_id"].unique())
    verdicts = list(VERDICT_COLOUR)
    grid = (table.assign(transition=[f"{a}→{b}" for a, b in zip(table["from_version"], table["to_version"])],
                         code=table["verdict"].map(verdicts.index))
            .pivot_table(index="run_id", columns="transition", values="code", aggfunc="max")
            .reindex(index=configs, columns=transitions))
    fig, ax = plt.subplots(figsize=(2 + 0.5 * len(transitions), 1 + 0.16 * len(configs)))
    ax.imshow(grid.to_numpy(dtype=float), cmap=ListedColormap(list(VERDICT_COLOUR.values())), vmin=-0.5,
              vmax=len(verdicts) - 0.5, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(transitions)), transitions, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(configs)), configs, fontsize=6)
    seen = [v for v in verdicts if v in set(table["verdict"])]
    ax.legend(handles=[Patch(facecolor=VERDICT_COLOUR[v], edgecolor="#999", label=v) for v in seen],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    ax.set_title("verdict of each config at each torch transition")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def builds_of(out: Path, versions) -> dict[str, dict]:
    """Each version's env.csv (``out/torch-VERSION/env.csv``) as a dict; {} where absent."""
    found = {}
    for v in versions:
        path = Path(out) / f"torch-{v}" / report.ENV
        if path.exists():
            env = report.read(path)
            found[str(v)] = dict(zip(env["key"], env["value"].fillna("").astype(str)))
    return found


def write(out: Path, table: pd.DataFrame, explained: pd.DataFrame | None = None) -> Path:
    """``out/changelog.md``, ``out/changelog.png`` and ``out/index.html`` (with ``explained``,
    or else ``out/explain.csv`` where it exists, the why of each transition); returns the page."""
    from . import page

    out = Path(out)
    if explained is None and (out / paths.EXPLAIN).exists():
        explained = pd.read_csv(out / paths.EXPLAIN, dtype=str, keep_default_na=False)
    builds = builds_of(out, pd.unique(pd.concat([table["from_version"], table["to_version"]])))
    md = markdown(table, builds, explained)
    (out / MARKDOWN).write_text(md, encoding="utf-8")
    figure(table, out / FIGURE)
    c = counts(table, builds, explained)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in c.columns)
    rows = "".join("<tr>" + "".join(page.cell(v) for v in r.values()) + "</tr>" for r in c.to_dict("records"))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Convergence changelog</title>",
             f"<style>{page.STYLE}</style></head><body>",
             f"<h1>Convergence changelog of torch: {len(c)} transitions</h1>",
             f'<p>Data: <a href="{paths.CHANGELOG}">{paths.CHANGELOG}</a> · <a href="{MARKDOWN}">{MARKDOWN}</a></p>',
             f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>',
             f'<p><img src="{FIGURE}" alt="verdicts"></p>',
             *((["<h2>Why: the ops each transition changed, where they ran, and their reproducers</h2>"]
                + page.explain_section(explained)) if explained is not None and len(explained) else []),
             f"<script>{page.SORT_JS}</script></body></html>"]
    path = out / paths.PAGE
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
