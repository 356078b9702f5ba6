"""The one factory for the report rows tests build: a row of runs.csv (or of a tolerances.csv) is
a config at the schema's defaults (``report.AXIS_DEFAULTS`` for every axis), overridden by what a
test states, so a test names only what it is about and its rows are the ones a report holds."""

import pandas as pd

from diagnostics import report

CONFIG_DEFAULTS = dict(model="gpt", optimizer="adamw", scheduler="cosine", warmup="none", device="cpu",
                       precision="fp32", **report.AXIS_DEFAULTS, lr_scale=1.0, steps=200, model_size="tiny")
assert list(CONFIG_DEFAULTS) == report.CONFIG  # the factory names every config column, in the schema's order


def row(**values) -> dict:
    """One run's row: the default config, seed 0, converged, then ``values``."""
    return {**CONFIG_DEFAULTS, "seed": 0, "status": "converged", "status_reason": "", **values}


def frame(rows) -> pd.DataFrame:
    """Rows (dicts) as a report's table, each completed with the default config."""
    return pd.DataFrame([{**CONFIG_DEFAULTS, **r} for r in rows])
