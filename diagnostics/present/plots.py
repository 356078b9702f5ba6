"""Figures: LR schedules, loss curves, OneCycle vs Cosine, baseline vs candidate.

Schedules are drawn from ``recipes.lr_curve`` (the grid's own optimizer and scheduler objects);
curves from a report directory's ``steps.csv`` / ``runs.csv`` / ``events.csv``. Everything
renders headless (Agg) to PNG files and returns their paths.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from diagnostics import detect, report
from diagnostics.grid import recipes
from diagnostics.judge import compare  # noqa: E402

WARMUP_STYLE = {"none": "-", "linear": "--"}
STATUS_COLOUR = detect.STATUS_COLOUR  # one registry (detect.STATUS_TABLE)
EVENT_MARKER = {"loss_spike": "^", "grad_spike": "v", "loss_shift": "2", "grad_shift": "1", "catastrophic_spike": "*",
                "explosion": "X", "relapse": "X", "nonfinite": "X"}


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def lr_curves(schedulers, optimizer: str, warmups, steps: int) -> dict[tuple[str, str], list[float]]:
    return {(s, w): recipes.lr_curve(optimizer, s, w, steps) for s in schedulers for w in warmups}


def plot_lr(schedulers, optimizer: str, warmups, steps: int, out: Path) -> Path:
    """LR vs step for the given schedulers x warmups on one axes (the chapter's exercise)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (s, w), lrs in lr_curves(schedulers, optimizer, warmups, steps).items():
        ax.plot(range(1, steps + 1), lrs, WARMUP_STYLE.get(w, "-"), label=f"{s} (warmup {w})")
    ax.set(xlabel="optimizer step", ylabel="learning rate",
           title=f"LR vs step: {', '.join(schedulers)} ({optimizer}, {steps} steps)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_lr_all(optimizer: str, steps: int, out: Path) -> Path:
    """Every scheduler x warmup as small multiples."""
    schedulers, warmups = list(recipes.SCHEDULERS), list(recipes.WARMUPS)
    fig, axes = plt.subplots(len(warmups), len(schedulers), figsize=(3.2 * len(schedulers), 2.6 * len(warmups)),
                             sharex=True, sharey=True, squeeze=False)
    for (s, w), lrs in lr_curves(schedulers, optimizer, warmups, steps).items():
        ax = axes[warmups.index(w)][schedulers.index(s)]
        ax.plot(range(1, steps + 1), lrs)
        ax.set_title(f"{s}, warmup {w}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"LR vs step, every schedule ({optimizer}, {steps} steps)")
    return _save(fig, out)


def _load(report_dir: Path):
    report_dir = Path(report_dir)
    runs = report.read(report_dir / report.RUNS)
    steps = report.read(report_dir / report.STEPS)
    events_path = report_dir / report.EVENTS
    events = report.read(events_path) if events_path.exists() else pd.DataFrame(columns=report.EVENTS_COLUMNS)
    return runs, steps, events


def _curve(ax, steps: pd.DataFrame, run: dict, events: pd.DataFrame, style="-", label=None, colour=None):
    tr = steps[steps["run_id"] == run["run_id"]]
    colour = colour or STATUS_COLOUR.get(run["status"], "black")
    ax.plot(tr["step"], tr["loss"], style, color=colour, lw=1, label=label)
    for e in events[events["run_id"] == run["run_id"]].to_dict("records"):
        if e["kind"] in EVENT_MARKER:
            y = tr.loc[tr["step"] == e["step"], "loss"]
            ax.plot(e["step"], y.iloc[0] if len(y) and pd.notna(y.iloc[0]) else ax.get_ylim()[1],
                    EVENT_MARKER[e["kind"]], color=colour, ms=6)
    return tr


def lr_axis(ax):
    """The panel's secondary axis for the LR, made once and shared by the runs drawn in it."""
    if not hasattr(ax, "lr_axis"):
        ax.lr_axis = ax.twinx()
    return ax.lr_axis


def _groups(runs: pd.DataFrame):
    """Figures are per model x device x precision x seed x LR scale (usually one each)."""
    keys = ["model", "device", "precision", "seed", "lr_scale"]
    return runs.groupby(keys, sort=True)


def plot_runs(report_dir: Path, out_dir: Path) -> list[Path]:
    """Per model: loss curves as small multiples, optimizers (rows) x schedulers (columns),
    warmup none (solid) and linear (dashed) overlaid, coloured by status, events marked, the LR
    on a secondary axis; plus the OneCycle vs Cosine figure."""
    runs, steps, events = _load(report_dir)
    out = []
    for key, g in _groups(runs):
        model, device, precision, seed, lr_scale = key
        opts = [o for o in recipes.OPTIMIZERS if o in set(g["optimizer"])] + sorted(set(g["optimizer"]) - set(recipes.OPTIMIZERS))
        scheds = [s for s in recipes.SCHEDULERS if s in set(g["scheduler"])]
        fig, axes = plt.subplots(len(opts), len(scheds), figsize=(3.4 * len(scheds), 2.8 * len(opts)),
                                 sharex=True, squeeze=False)
        for run in g.to_dict("records"):
            ax = axes[opts.index(run["optimizer"])][scheds.index(run["scheduler"])]
            tr = _curve(ax, steps, run, events, WARMUP_STYLE.get(run["warmup"], "-"),
                        label=f"{run['warmup']}: {run['status']}")
            lr_ax = lr_axis(ax)
            lr_ax.plot(tr["step"], tr["lr"], WARMUP_STYLE.get(run["warmup"], "-"), color="grey", lw=0.6, alpha=0.6)
            lr_ax.tick_params(labelsize=6, colors="grey")
            ax.set_title(f"{run['optimizer']} / {run['scheduler']}", fontsize=9)
            ax.legend(fontsize=6, loc="upper right")
            ax.grid(alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("step")
        for row in axes:
            row[0].set_ylabel("loss")
        fig.suptitle(f"{model} on {device}, {precision}, seed {seed}, LR x{lr_scale:g}: loss (status colour; "
                     f"solid: no warmup, dashed: linear warmup), LR in grey; markers: spikes and divergence")
        fig.tight_layout()
        out.append(_save(fig, Path(out_dir) / f"curves-{model}-{device}-{precision}-s{seed}-lrx{lr_scale:g}.png"))
    out += plot_onecycle_vs_cosine(report_dir, out_dir, runs, steps, events)
    return out


def plot_onecycle_vs_cosine(report_dir, out_dir, runs=None, steps=None, events=None) -> list[Path]:
    """The chapter's observation: per model, OneCycle next to Cosine, loss and LR, per optimizer."""
    if runs is None:
        runs, steps, events = _load(report_dir)
    out = []
    pair = ["cosine", "onecycle"]
    for key, g in _groups(runs[runs["scheduler"].isin(pair)]):
        if set(g["scheduler"]) != set(pair):
            continue
        model, device, precision, seed, lr_scale = key
        opts = [o for o in recipes.OPTIMIZERS if o in set(g["optimizer"])]
        fig, axes = plt.subplots(len(opts), 2, figsize=(10, 2.8 * len(opts)), sharex=True, squeeze=False)
        for run in g.to_dict("records"):
            ax = axes[opts.index(run["optimizer"])][pair.index(run["scheduler"])]
            colour = "#1565c0" if run["warmup"] == "none" else "#ef6c00"
            tr = _curve(ax, steps, run, events, "-", label=f"warmup {run['warmup']} ({run['status']})", colour=colour)
            lr_ax = lr_axis(ax)
            lr_ax.plot(tr["step"], tr["lr"], ":", color=colour, lw=1)
            lr_ax.set_ylabel("LR (dotted)", fontsize=7)
            ax.set_title(f"{run['optimizer']} / {run['scheduler']}", fontsize=9)
            ax.set_ylabel("loss")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{model}: OneCycle vs Cosine — loss (solid) and LR (dotted)")
        fig.tight_layout()
        out.append(_save(fig, Path(out_dir) / f"onecycle-vs-cosine-{model}-{device}-{precision}-s{seed}.png"))
    return out


def changed_configs(baseline: pd.DataFrame, candidate: pd.DataFrame) -> list[tuple[dict, dict]]:
    """(baseline row, candidate row) for every run whose numbers changed at all (not identical)."""
    from diagnostics.judge.baseline import key_of

    base = {key_of(r): r for r in baseline.to_dict("records")}
    return [(base[key_of(r)], r) for r in candidate.to_dict("records")
            if key_of(r) in base and compare.check_run(r, base[key_of(r)])["verdict"] != "identical"]


def plot_compare(baseline_dir: Path, candidate_dir: Path, out_dir: Path) -> list[Path]:
    """Baseline and candidate loss curves overlaid, one panel per config that changed."""
    b_runs, b_steps, b_events = _load(baseline_dir)
    c_runs, c_steps, c_events = _load(candidate_dir)
    pairs = changed_configs(b_runs, c_runs)
    if not pairs:
        return []
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3 * rows), squeeze=False)
    for ax, (b, c) in zip(axes.flat, pairs):
        _curve(ax, b_steps, b, b_events, "-", label=f"baseline: {b['status']}", colour="#455a64")
        _curve(ax, c_steps, c, c_events, "-", label=f"candidate: {c['status']}", colour="#d84315")
        ax.set_title(c["run_id"], fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle(f"changed configs: {Path(baseline_dir).name} (grey) vs {Path(candidate_dir).name} (orange)")
    fig.tight_layout()
    return [_save(fig, Path(out_dir) / "compare.png")]
