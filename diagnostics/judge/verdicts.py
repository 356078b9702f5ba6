"""The verdicts of a comparison, declared once (``VERDICT_TABLE``), with the numbers every verdict
rests on (the practical margin, the family-wise error, the cost thresholds) and the ``Policy``
that says which verdicts fail a check. What each verdict means: compare.py's docs."""

from __future__ import annotations

from dataclasses import dataclass

from diagnostics.detect import STATUS_RANK


@dataclass(frozen=True)
class Verdict:
    """One verdict of compare.csv, declared once: what it says of a config, and how the readers
    (summary, pictures, bisect) treat it."""

    name: str
    judged: bool  # something was checked (identical ... status_changed)
    beyond_noise: bool  # the difference is beyond the measured noise
    bits_kept: bool  # the same weights on every seed
    colour: str  # pictures (changelog)
    look_rank: int | None = None  # among what needs a reader, worst first (summary); None: nothing to read


VERDICT_TABLE = (
    Verdict("identical", True, False, True, "#e0e0e0"),
    Verdict("equivalent", True, False, False, "#90caf9"),
    Verdict("changed", True, True, False, "#ffb74d", look_rank=2),
    Verdict("regressed", True, True, False, "#e53935", look_rank=0),
    Verdict("improved", True, True, False, "#81c784", look_rank=3),
    Verdict("status_changed", True, True, False, "#8e24aa", look_rank=1),
    Verdict("missing", False, False, False, "#616161", look_rank=4),
    Verdict("new", False, False, False, "#616161", look_rank=5),
    Verdict("skipped", False, False, False, "#ffffff"),
    Verdict("unjudged", False, False, False, "#212121"),
)
VERDICTS = tuple(v.name for v in VERDICT_TABLE)
JUDGED = tuple(v.name for v in VERDICT_TABLE if v.judged)
BEYOND_NOISE = tuple(v.name for v in VERDICT_TABLE if v.beyond_noise)
BITS_KEPT = tuple(v.name for v in VERDICT_TABLE if v.bits_kept)
WITHIN_NOISE = tuple(v.name for v in VERDICT_TABLE if v.judged and not v.beyond_noise)
NEEDS_A_LOOK = tuple(v.name for v in sorted((v for v in VERDICT_TABLE if v.look_rank is not None),
                                            key=lambda v: v.look_rank))
VERDICT_COLOUR = {v.name: v.colour for v in VERDICT_TABLE}
# Practical margin: a relative change of 5% in a final or held-out loss (or in the held-out
# accuracy) is a difference a recipe owner acts on; for a diverged run, 5% of the run's steps
# earlier or later. ``--margin`` changes it. Each config states the seeds it needs to see it
# (``tolerances.csv`` seeds_for_margin) and the shift it could see (``compare.csv`` mde).
MARGIN = 0.05
# Family-wise error rate over all the tests of one comparison (Holm-Bonferroni): one false alarm
# in a hundred comparisons of runs that differ only in rounding (benchmarks/statistics.py).
ALPHA = 0.01
# Cost thresholds: a 2x slowdown (steps/s) or 1.5x more peak memory is news even when the loss
# is fine. Within one machine, run-to-run noise of steps/s here was under 10% (docs/measured/index.md).
SLOWDOWN = 2.0
MEMORY_GROWTH = 1.5

# A config's init, judged apart from its training: did torch's seeded initialisation give the
# same weights on both sides (the runs themselves train from the baseline's seed checkpoints
# where it has them, so a changed init does not unpair them)? ``init_changed`` fails a check.
INIT_SAME, INIT_CHANGED = "init_same", "init_changed"


@dataclass(frozen=True)
class Policy:
    """Which verdicts fail a check. The defaults fail everything that is not a clean pass:
    a regression, an improvement beyond the margin (the baseline must be updated to describe
    what the suite sees, as PyTorch's accuracy CI treats IMPROVED), a baseline seed the
    candidate lacks, a candidate seed with no baseline, a config where nothing was judged."""

    allow_missing: bool = False  # a baseline seed the candidate lacks passes
    allow_no_baseline: bool = False  # a candidate seed without a baseline passes
    allow_improved: bool = False  # an improvement (or a better status) passes
    fail_on_change: bool = False  # a change beyond noise but within the margin fails

    def failure(self, row: dict) -> str | None:
        """Why this verdict row fails the check, or None when it passes. A config judged on some
        seeds while others are missing (or new) fails for those too, whatever its verdict."""
        v, better = row["verdict"], row.get("direction") == "better"
        listed = lambda key: row.get(key) if isinstance(row.get(key), str) and row.get(key) else ""  # noqa: E731
        if row.get("init_verdict") == INIT_CHANGED:
            return "init_changed: this torch's seeded initialisation gives the same seeds other initial weights"
        if v == "regressed" or (v == "status_changed" and not better):
            return "regression"
        if (v == "improved" or (v == "status_changed" and better)) and not self.allow_improved:
            return "improvement beyond the margin: update the baseline, or pass --allow-improved"
        if v == "unjudged":
            return "nothing could be judged"
        if v == "new" and not self.allow_no_baseline:
            return "no baseline to judge it against (--allow-no-baseline to accept)"
        if (v == "missing" or listed("seeds_missing")) and not self.allow_missing and v != "new":
            seeds = f" (baseline seeds {listed('seeds_missing')})" if listed("seeds_missing") else ""
            return f"missing from the candidate{seeds} (--allow-missing to accept)"
        if listed("seeds_new") and not self.allow_no_baseline:
            return f"candidate seeds {listed('seeds_new')} have no baseline partner (--allow-no-baseline to accept)"
        if v == "changed" and self.fail_on_change:
            return "changed beyond numerical noise (--fail-on-change)"
        return None


def worst(statuses) -> str:
    return max(statuses, key=lambda s: STATUS_RANK.get(s, 99))


def is_skipped(row: dict) -> bool:
    return row.get("status") == "skipped"


def is_diverged(status: str) -> bool:
    return str(status).startswith("diverged")
