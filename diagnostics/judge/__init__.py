"""Judging runs: the statistics, measured noise (calibration), the committed baseline, the
verdicts of a comparison, and the reproducibility, DDP and stability checks."""
