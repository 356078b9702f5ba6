"""Convergence grid: every model x optimizer x scheduler x warmup x device x precision x seed.

Each test trains one grid point, writes its rows to the report directory and checks the run
against the committed baseline (same status, final loss within the band). Without a baseline
row it checks that the run finished with a full record.
"""

GRID = "default"  # the grid preset this suite runs unless --grid says otherwise


def test_convergence(run_spec, grid_point):
    grid_point(run_spec)
