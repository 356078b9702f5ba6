"""Convergence grid: every model x optimizer x scheduler x warmup x device x precision x seed.

Each test trains one grid point, writes its rows to the report directory and checks the run
against its committed baseline row with compare.check_run (the verdicts, tested against the
config's measured noise). A run with no baseline row is ``new`` and fails unless
``--allow-no-baseline``; either way it must finish with a full record.
"""

GRID = "default"  # the grid preset this suite runs unless --grid says otherwise


def test_convergence(run_spec, grid_point):
    grid_point(run_spec)
