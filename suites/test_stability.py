"""Stability sweep: each recipe's LR multiplied by 0.3, 1, 3, 10 and 30, with and without warmup.

Each grid point is trained and checked like a convergence run; at the end of the session
``stability.csv`` gives, per model x optimizer x scheduler x warmup, the stability edge (the
largest multiplier that still converges) and Wortsman et al.'s LR sensitivity.
"""

GRID = "stability"


def test_stability(run_spec, grid_point):
    grid_point(run_spec)
