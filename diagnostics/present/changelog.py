"""The convergence changelog of torch (``diagnostics changelog V1 ... Vn --out DIR``): what
``release.changelog`` judged, written for readers. ``DIR/changelog.csv`` holds one row per
(from version, to version, config); this module adds ``DIR/changelog.md`` (per transition: how
many configs kept every bit, changed bits within noise, moved beyond noise or went unjudged, and
on which paths) and ``DIR/index.html`` with a configs x transitions picture coloured by verdict.

A changelog is only ever extended (``extend``): a run over some releases into a folder that holds
an earlier changelog replaces the transitions it judged again and keeps every other one, so a
run over fewer releases never shrinks the committed artefact.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from diagnostics import paths, report
from diagnostics.judge import verdicts
from diagnostics.present import summary

FIGURE, MARKDOWN = paths.CHANGELOG_FIGURE, paths.CHANGELOG_MD
# verdict colours of the picture: bits kept, bits within noise, beyond noise, nothing judged
VERDICT_COLOUR = verdicts.VERDICT_COLOUR


def release_key(version: str) -> tuple:
    """Sort key of a release label: (2, 5, 1) for "2.5.1" (a local tag such as "+cpu" ignored);
    a label that is not a version (a wheel's) sorts after every release, by name."""
    try:
        return (0, *(int(x) for x in str(version).split("+")[0].split(".")), "")
    except ValueError:
        return (1, str(version))


def transitions_of(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (from, to) release pair of each row: changelog.csv's ``from_version``/``to_version``,
    or explain.csv's ``transition`` ("2.5.1 -> 2.6.0")."""
    if "transition" in table.columns:
        return [tuple(str(t).split(" -> ", 1)) if " -> " in str(t) else (str(t), "") for t in table["transition"]]
    return list(zip(table["from_version"].astype(str), table["to_version"].astype(str)))


def releases_of(table: pd.DataFrame) -> list[str]:
    """The releases a changelog table judged, oldest first."""
    return sorted({v for pair in transitions_of(table) for v in pair if v}, key=release_key)


def extend(committed: pd.DataFrame | None, table: pd.DataFrame) -> pd.DataFrame:
    """A committed changelog table (changelog.csv or explain.csv) extended by a new run's
    ``table``: every row of the new run, and every committed row whose transition the run did not
    judge again, i.e. one of whose two releases the run did not cover (a longer committed span,
    2.8.0 -> 2.15.0, stays beside a run's finer 2.8.0 -> 2.9.1 until a run covers both its ends).
    Rows ordered by (from, to) release; the releases covered never shrink."""
    if committed is None or committed.empty:
        return table.reset_index(drop=True)
    covered = set(releases_of(table))
    standing = [not (a in covered and b in covered) for a, b in transitions_of(committed)]
    merged = pd.concat([committed[standing], table], ignore_index=True)
    pairs = transitions_of(merged)
    order = sorted(range(len(merged)), key=lambda i: (release_key(pairs[i][0]), release_key(pairs[i][1])))
    return merged.iloc[order].reset_index(drop=True)


def spans(table: pd.DataFrame) -> list[str]:
    """The transitions of a changelog that step over a release it judged elsewhere ("2.8.0 ->
    2.15.0 spans 2.9.1, 2.10.0"): kept from an earlier run until one covers both their ends."""
    releases = releases_of(table)
    out = []
    for a, b in dict.fromkeys(transitions_of(table)):
        inside = [v for v in releases if release_key(a) < release_key(v) < release_key(b)]
        if inside:
            out.append(f"{a} -> {b} spans {', '.join(inside)}")
    return out


FIRST_CHANGE_COLUMNS = ["run_id", "layout", "context", "judged_from", "judged_to", "first_bits_change", "bits_verdict",
                        "first_status_change", "status_change", "status_changes"]


COMPARED = (*verdicts.JUDGED, "unjudged")  # both sides ran and paired: their bits were compared


def first_changes(table: pd.DataFrame) -> pd.DataFrame:
    """Per config, what its consecutive transitions alone say (nothing trained, no binary
    search): ``judged_from`` .. ``judged_to``, the unbroken chain of transitions that compared it
    (both sides ran: not skipped, missing or new) up to the last that did; the first of them that
    changed its bits (with its verdict) and the first that changed its status (with the change),
    "" where none; how many changed its status. Exact where
    ``bisect`` assumes: the bits stay the chain's first release's until a transition changes them,
    and a status that changes back is counted (a binary search would miss it). Spans that step
    over a judged release are left out."""
    releases = releases_of(table)
    step = pd.Series([not any(release_key(a) < release_key(v) < release_key(b) for v in releases)
                      for a, b in transitions_of(table)], index=table.index)
    compared = table["verdict"].isin(COMPARED)  # a skipped, missing or new side compared nothing: the chain breaks
    rows = []
    for run_id, g in table[step & compared].groupby("run_id", sort=True):
        chain = sorted(g.to_dict("records"), key=lambda r: release_key(str(r["from_version"])))
        start = len(chain) - 1
        while start > 0 and str(chain[start - 1]["to_version"]) == str(chain[start]["from_version"]):
            start -= 1
        chain = chain[start:]
        bits = next((r for r in chain if r["verdict"] not in verdicts.BITS_KEPT), None)
        status = [r for r in chain if r["verdict"] == "status_changed"]
        name = lambda r: f"{r['from_version']} -> {r['to_version']}" if r else ""  # noqa: E731
        rows.append(dict(run_id=run_id, layout=chain[-1]["layout"], context=chain[-1]["context"],
                         judged_from=chain[0]["from_version"], judged_to=chain[-1]["to_version"],
                         first_bits_change=name(bits), bits_verdict=bits["verdict"] if bits else "",
                         first_status_change=name(status[0] if status else None),
                         status_change=f"{status[0]['base_status']} -> {status[0]['candidate_status']}" if status else "",
                         status_changes=len(status)))
    return pd.DataFrame(rows, columns=FIRST_CHANGE_COLUMNS)


def build_change(a: dict, b: dict) -> str:
    """What changed in how torch was built between two sessions' env.csv (env.BUILD_LINES),
    e.g. "onednn: Intel(R) MKL-DNN v3.7.1 ... -> ... v3.10.2 ..."; "" when nothing did or
    either side did not record it."""
    from diagnostics.run.env import BUILD_LINES

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
    from diagnostics.release import explain

    builds = builds or {}
    out = []
    for (a, b), t in table.groupby(["from_version", "to_version"], sort=False):
        bits = t[~t["verdict"].isin(verdicts.BITS_KEPT)]
        judged_bits = bits[bits["verdict"].isin(verdicts.JUDGED)]
        within = t["verdict"].isin(verdicts.WITHIN_NOISE)
        out.append(dict(
            from_version=a, to_version=b, configs=len(t), identical=int(t["verdict"].isin(verdicts.BITS_KEPT).sum()),
            equivalent=int((within & ~t["verdict"].isin(verdicts.BITS_KEPT)).sum()),
            beyond_noise=int(t["verdict"].isin(verdicts.BEYOND_NOISE).sum()),
            not_judged=int((~t["verdict"].isin(verdicts.JUDGED)).sum()),
            bits_changed_in=paths_of(judged_bits), beyond_noise_in=paths_of(t[t["verdict"].isin(verdicts.BEYOND_NOISE)]),
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


def status_reasons(out: Path, table: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(release, run_id) -> the status_reason of each side of a status change, from the two
    sessions' runs.csv (where a diverged run's NaN origin is written); absent sessions say
    nothing."""
    wanted: dict[str, set] = {}
    for r in table[table["verdict"] == "status_changed"].to_dict("records"):
        for v in (r["from_version"], r["to_version"]):
            wanted.setdefault(str(v), set()).add(r["run_id"])
    found = {}
    for v, ids in wanted.items():
        path = Path(out) / f"torch-{v}" / report.RUNS
        if path.exists():
            runs = report.read_csv(path)
            for r in runs[runs["run_id"].isin(ids)].to_dict("records"):
                reason = r.get("status_reason")
                found.setdefault((v, r["run_id"]), reason if isinstance(reason, str) else "")
    return found


def layout_part(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the grid's layout part: configs with a batch layout or a context length of their
    own (padded, packed and odd-length batches), not the full batches at the model's length."""
    return rows[(rows["layout"].astype(str) != "full") | (pd.to_numeric(rows["context"], errors="coerce") != 0)]


def by_layout(table: pd.DataFrame, explained: pd.DataFrame | None = None,
              reasons: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """Per batch layout of the grid's layout part (configs with a layout or a context length of
    their own: padded, packed and odd-length batches), every transition at which one of its
    configs changed bits or status: how many of its configs were judged there, how many changed
    bits, each status change (with the diverged side's reason, which names where its first NaN
    came from) and why (explain's findings in that layout's families)."""
    from diagnostics.release import explain

    part = layout_part(table)
    rows = []
    for name, t in part.groupby(part["layout"].astype(str), sort=False):
        for (a, b), u in t.groupby(["from_version", "to_version"], sort=False):
            bits = u[~u["verdict"].isin(verdicts.BITS_KEPT) & u["verdict"].isin(verdicts.JUDGED)]
            if bits.empty:
                continue
            status = []
            for r in u[u["verdict"] == "status_changed"].to_dict("records"):
                # the diverged side's reason first (its NaN origin), whichever release it ran on
                sides = sorted(((a, r["base_status"]), (b, r["candidate_status"])),
                               key=lambda side: not verdicts.is_diverged(str(side[1])))
                why = next((w for w in ((reasons or {}).get((str(v), r["run_id"]), "") for v, _ in sides) if w), "")
                status.append(f"{r['run_id']}: {r['base_status']} -> {r['candidate_status']}"
                              + (f" ({why})" if why else ""))
            why = ""
            if explained is not None and len(explained):
                from diagnostics.release.numerics import family_of_row

                families = {family_of_row(r) for r in u.to_dict("records")}
                own = explained[(explained["transition"] == f"{a} -> {b}") & explained["family"].isin(families)]
                why = explain.summary(own, bits_changed=True)
            rows.append(dict(layout=name, from_version=a, to_version=b, configs=len(u), bits_changed=len(bits),
                             status_changed="; ".join(status), why=why))
    return pd.DataFrame(rows, columns=["layout", "from_version", "to_version", "configs", "bits_changed",
                                       "status_changed", "why"])


def markdown(table: pd.DataFrame, builds: dict[str, dict] | None = None,
             explained: pd.DataFrame | None = None, reasons: dict[tuple[str, str], str] | None = None,
             citations: pd.DataFrame | None = None, bisected: pd.DataFrame | None = None) -> str:
    """The changelog as Markdown: the machine, the transitions table (with why, where traced),
    the spans an earlier run left, each batch layout's changes (with the causes torch's pull
    requests name, ``read_citations``; its configs' first changes from the transitions and,
    given ``bisected`` (``read_bisect``), from a bisect against the first release), then each
    config beyond noise."""
    c = counts(table, builds, explained)
    releases = releases_of(table)
    lines = [f"## Convergence changelog: {len(releases)} releases, {len(c)} transitions, "
             f"{table['run_id'].nunique()} configs", "",
             f"Releases: {', '.join(releases)}.", ""]
    if machine(builds or {}):
        lines += [machine(builds or {}), ""]
    lines += summary.table(c.to_dict("records"), [
        ("from", "from_version", ""), ("to", "to_version", ""), ("identical", "identical", ""),
        ("bits within noise", "equivalent", ""), ("beyond noise", "beyond_noise", ""), ("not judged", "not_judged", ""),
        ("bits changed in", "bits_changed_in", ""), ("beyond noise in", "beyond_noise_in", ""),
        ("build change", "build_change", ""), ("CPU capability", "cpu_capability", ""), ("why (changed ops)", "why", "")])
    if spans(table):
        lines += ["", "Spans kept from an earlier run (a later run judged releases inside them; each stands until "
                      "one run covers both its ends): " + "; ".join(spans(table)) + "."]
    layouts = by_layout(table, explained, reasons)
    if len(layouts):
        layouts["cited"] = [cited(citations, f"{r['from_version']} -> {r['to_version']}",
                                  f"{r['why']} {r['status_changed']}") for r in layouts.to_dict("records")]
        lines += ["", "### By batch layout: every transition that changed a layout's bits or status", ""]
        lines += summary.table(layouts.to_dict("records"), [
            ("layout", "layout", ""), ("from", "from_version", ""), ("to", "to_version", ""),
            ("configs judged", "configs", ""), ("bits changed", "bits_changed", ""),
            ("status changed", "status_changed", ""), ("why (its families' changed ops)", "why", ""),
            ("what torch's pull requests say", "cited", "")])
    first = first_changes(table)
    part = layout_part(first)
    if len(part):
        lines += ["", "### Each padded, packed or odd-length config: its first change, from the transitions "
                      f"(a bisect without a search; `{paths.FIRST_CHANGES}` holds every config)", ""]
        lines += summary.table(part.to_dict("records"), [
            ("config", "run_id", ""), ("judged", "judged_from", ""), ("to", "judged_to", ""),
            ("bits first changed", "first_bits_change", ""), ("verdict", "bits_verdict", ""),
            ("status first changed", "first_status_change", ""), ("how", "status_change", ""),
            ("status changes", "status_changes", "")])
    searched = layout_part(bisected) if bisected is not None and "layout" in bisected else bisected
    if searched is not None and len(searched):
        changed = searched[searched["first_changed"] != ""]
        skipped = int((searched["verdict"] == "skipped").sum())
        span = f"{bisected.attrs.get('first', '?')} … {bisected.attrs.get('last', '?')}"
        lines += ["", f"### The same configs bisected against the first release ({span}; `{paths.BISECT}`, "
                      f"`diagnostics bisect --sessions`): {len(changed)} of {len(searched)} changed beyond noise "
                      f"or in status" + (f", {skipped} not judged (skipped on a side)" if skipped else ""), ""]
        lines += summary.table(changed.to_dict("records"), [
            ("config", "run_id", ""), ("same at", "last_same", ""), ("first changed at", "first_changed", ""),
            ("verdict", "verdict", ""), ("detail", "detail", ""), ("why (that transition's changed ops)", "why", "")])
    beyond = table[table["verdict"].isin(verdicts.BEYOND_NOISE)]
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


def read(out: Path) -> pd.DataFrame:
    """``out/changelog.csv`` (ReportError, one line, where it is missing or malformed), rows
    judged before an axis existed given its default."""
    return report.read(Path(out) / paths.CHANGELOG, ["from_version", "to_version", "run_id", "verdict"])


CITATION_COLUMNS = ["transition", "op", "source", "says"]


def read_bisect(out: Path) -> pd.DataFrame | None:
    """``out/bisect.csv`` as text (``paths.BISECT``; None where absent), its first and last
    releases in ``attrs`` (the releases a row's ``last_same`` and ``first_changed`` span)."""
    path = Path(out) / paths.BISECT
    if not path.exists():
        return None
    table = report.read(path, ["run_id", "first_changed", "last_same", "verdict"])
    for c in ("first_changed", "last_same", "detail", "why"):
        table[c] = table[c].astype(object).where(table[c].notna(), "").astype(str) if c in table else ""
    ends = sorted((set(table["last_same"]) | set(table["first_changed"])) - {""}, key=release_key)
    if ends:
        table.attrs.update(first=ends[0], last=ends[-1])
    return table


def read_citations(out: Path) -> pd.DataFrame | None:
    """``out/citations.csv`` (``paths.CITATIONS``; None where absent): causes torch's own pull
    requests or release notes name, one row per (transition "2.4.1 -> 2.5.1", op as explain names
    it, ``source`` a URL, ``says`` what that source states). Written by hand, never inferred: a
    row is shown only beside a transition where the op it names changed (``cited``). A file
    without those columns is a ReportError (one line)."""
    path = Path(out) / paths.CITATIONS
    if not path.exists():
        return None
    return report.read(path, CITATION_COLUMNS)[CITATION_COLUMNS].astype(str)


def cited(citations: pd.DataFrame | None, transition: str, text: str) -> str:
    """The citations of one transition whose op the given text (its why, its NaN origins) names:
    "aten::_softmax: SOURCE (what it says)", joined; "" where none."""
    if citations is None or citations.empty:
        return ""
    own = citations[(citations["transition"] == transition)]
    return "; ".join(f"{r['op']}: {r['source']} ({r['says']})" for r in own.to_dict("records")
                     if re.search(re.escape(r["op"]) + r"(?![\w.])", text))  # aten::_softmax is not _softmax_backward


def render(out: Path) -> str:
    """The Markdown of the changelog a folder holds (changelog.csv, explain.csv, each release's
    env.csv and runs.csv), as ``write`` writes it: the docs build renders the committed one with it."""
    from diagnostics.release import explain

    table = read(out)
    return markdown(table, builds_of(out, releases_of(table)), explain.read(out), status_reasons(out, table),
                    read_citations(out), read_bisect(out))


def write(out: Path, table: pd.DataFrame, explained: pd.DataFrame | None = None) -> Path:
    """``out/changelog.md``, ``out/changelog.png`` and ``out/index.html`` (with ``explained``,
    or else ``out/explain.csv`` where it exists, the why of each transition); returns the page."""
    from diagnostics.present import page
    from diagnostics.release import explain

    out = Path(out)
    if explained is None:
        explained = explain.read(out)
    builds = builds_of(out, releases_of(table))
    report.write_atomic(out / paths.FIRST_CHANGES, first_changes(table))
    (out / MARKDOWN).write_text(markdown(table, builds, explained, status_reasons(out, table), read_citations(out),
                                         read_bisect(out)), encoding="utf-8")
    figure(table, out / FIGURE)
    c = counts(table, builds, explained)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in c.columns)
    rows = "".join("<tr>" + "".join(page.cell(v) for v in r.values()) + "</tr>" for r in c.to_dict("records"))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Convergence changelog</title>",
             f"<style>{page.STYLE}</style></head><body>",
             f"<h1>Convergence changelog of torch: {len(releases_of(table))} releases, {len(c)} transitions</h1>",
             f"<p>{html.escape(machine(builds))}</p>",
             *([f"<p>{html.escape('Spans kept from an earlier run: ' + '; '.join(spans(table)))}</p>"]
               if spans(table) else []),
             f'<p>Data: <a href="{paths.CHANGELOG}">{paths.CHANGELOG}</a> · <a href="{MARKDOWN}">{MARKDOWN}</a></p>',
             f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>',
             f'<p><img src="{FIGURE}" alt="verdicts"></p>',
             *((["<h2>Why: the ops each transition changed, where they ran, and their reproducers</h2>"]
                + page.explain_section(explained)) if explained is not None and len(explained) else []),
             f"<script>{page.SORT_JS}</script></body></html>"]
    path = out / paths.PAGE
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
