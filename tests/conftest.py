import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the grid point most tests train: RunSpec(**GPT_ADAMW, steps=...)
GPT_ADAMW = dict(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu")


def diagnostics(*args, timeout=600):
    """``python -m diagnostics ARGS`` as a user runs it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "diagnostics", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def smoke_reports(tmp_path_factory):
    """The smoke grid (20 steps) without and with xdist: {workers: (report dir, process)}."""
    out = {}
    for workers in ("0", "2"):
        d = tmp_path_factory.mktemp(f"smoke-n{workers}")
        proc = diagnostics("run", "--grid", "smoke", "--steps", "20", "--devices", "cpu", "--report-dir", str(d),
                           "--data-dir", str(d / "data"), "-n", workers, "--allow-no-baseline")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out[workers] = (d, proc)
    return out
