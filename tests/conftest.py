import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the grid point most tests train: RunSpec(**GPT_ADAMW, steps=...)
GPT_ADAMW = dict(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu")


def diagnostics(*args, timeout=600):
    """``python -m diagnostics ARGS`` as a user runs it, in its own process: for what needs one
    (a session killed, a report folder held by another process, a plugin file its xdist workers
    load) and a few tests of the one-line-error contract (no traceback reaches the user); every
    other command test uses ``cli``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "diagnostics", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def cli(*args) -> subprocess.CompletedProcess:
    """``diagnostics ARGS`` run in this process, from the checkout as ``diagnostics`` runs: main's
    exit status (argparse's, for a bad option), its stdout and its stderr. The commands that train
    too: their pytest session runs nested in this one. The torch import is paid once per test
    process instead of once per call (about 3-4 s each on two cores)."""
    import contextlib
    import io

    from diagnostics.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(ROOT):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def write_rounding_noise(runs_csv: Path, rel_noise: float = 1e-4) -> Path:
    """A tolerances.csv beside ``runs_csv``: every config's values given a rounding-sized noise
    (``rel_noise`` of the value) and its own status seen ten times without a flip, as calibration
    would measure, so edits of the report are judged rather than ``unjudged``."""
    from diagnostics import report
    from diagnostics.judge import compare

    runs = report.read(runs_csv)
    tol = runs[compare.CONFIG].assign(run_id=runs["run_id"], statuses_seen=runs["status"], status_flips=0,
                                      status_runs=10)
    for value in ("final_loss", "val_loss", "val_metric"):
        tol[f"{value}_noise"], tol[f"{value}_df"] = rel_noise * runs[value].abs(), 10
    out = runs_csv.parent / "tolerances.csv"
    tol.to_csv(out, index=False)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One folder of the built-in datasets per test process: each is written once, by the first
    test that trains on it, and read by every other."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def smoke_reports(tmp_path_factory, worker_id):
    """The smoke grid (20 steps) without and with xdist: {workers: (report dir, process)}. Trained
    once per test session: xdist workers share it through their common temporary root, the first
    to ask training it under a file lock (pytest-xdist's recipe for a session fixture run once), so
    its readers never write into it."""
    import json

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if worker_id != "master" else root
    out = {}
    with FileLock(str(root / "smoke.lock")):
        for workers in ("0", "2"):
            d, said = root / f"smoke-n{workers}", root / f"smoke-n{workers}.json"
            if not said.exists():
                proc = cli("run", "--grid", "smoke", "--steps", "20", "--devices", "cpu", "--report-dir",
                                   str(d), "--data-dir", str(d / "data"), "-n", workers, "--allow-no-baseline")
                said.write_text(json.dumps(dict(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)))
            proc = subprocess.CompletedProcess(["run"], **json.loads(said.read_text()))
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            out[workers] = (d, proc)
    return out
