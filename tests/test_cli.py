"""The command line and the suite as users run them: in process, and in a process of their own where that is the point."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from diagnostics import detect, report
from diagnostics.grid import data, devices
from tests.conftest import cli, diagnostics, write_rounding_noise

ROOT = Path(__file__).resolve().parent.parent


def run(*args, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(proc, code, pattern):
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert pattern in lines[0]


ABSENT = next((d for d in devices.DEVICE_TYPES if not devices.is_available(d)), None)


@pytest.mark.parametrize("args,pattern", [
    (["--optimizers", "adam"], "unknown optimizers 'adam'; valid: adamw, sgd, lion"),
    (["--schedulers", "poly"], "valid: constant, step, cosine, cosine_restarts, onecycle"),
    (["--models", "bert"], "valid: gpt, resnet, resnet18, vit"),
    (["--grid", "huge"], "unknown grid 'huge'; valid: smoke, default, nightly"),
    (["--steps", "0"], "--steps 0: must be at least 2"),
    (["--steps", "1"], "--steps 1: must be at least 2"),
    (["--seeds", "x"], "--seeds 'x' is not a comma list of integers"),
    (["--data-root", "/nonexistent/data"], "--data-root /nonexistent/data does not exist"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--margin", "2"], "--margin 2: must be a fraction between 0 and 1"),
    (["--margin", "x"], "--margin 'x' is not a number"),
])
def test_bad_input_is_one_line_and_exit_2(args, pattern, tmp_path):
    proc = cli("run", "--report-dir", str(tmp_path / "r"), *args)
    assert_one_line_error(proc, 2, pattern)
    assert not (tmp_path / "r").exists()  # nothing started


@pytest.mark.parametrize("args,pattern", [
    (["--steps", "0"], "--steps 0: must be at least 2"),  # the command's own check
    (["--bogus"], "unrecognized arguments: --bogus"),  # argparse's
])
def test_bad_input_reaches_the_user_as_one_line_without_a_traceback(args, pattern, tmp_path):
    """As a user's shell sees it: its own process, one line on stderr, exit 2 (the in-process
    cases above share main's code path)."""
    assert_one_line_error(diagnostics("run", "--report-dir", str(tmp_path / "r"), *args), 2, pattern)


@pytest.mark.skipif(ABSENT is None, reason="every device type is present")
def test_absent_device_fails_the_whole_session():
    proc = cli("run", "--devices", ABSENT)
    assert_one_line_error(proc, 2, f"requested device {ABSENT} is not available")
    # the suite itself, run by pytest directly, fails the same way (no silent skips)
    proc = run("-m", "pytest", "suites/test_convergence.py", "--devices", ABSENT, "-p", "no:cacheprovider")
    assert proc.returncode == 4 and f"requested device {ABSENT} is not available" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pytest_rejects_bad_options_in_one_line():
    proc = run("-m", "pytest", "suites/test_convergence.py", "--optimizers", "adam", "-p", "no:cacheprovider")
    assert proc.returncode == 4 and "unknown optimizers 'adam'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_env_prints_what_the_report_records():
    proc = cli("env")
    assert proc.returncode == 0
    env = dict(line.split(",", 1) for line in proc.stdout.splitlines())
    assert env["torch_version"] == torch.__version__ and "cpu" in env["available_devices"]


@pytest.mark.slow
def test_smoke_grid_writes_the_three_reports(smoke_reports):
    d, proc = smoke_reports["0"]
    runs = report.read(d / "runs.csv")
    assert len(runs) == 4 and (runs["baseline_check"] == "new").all()  # 20 steps: no baseline (allowed here)
    for name in ("steps.csv", "env.csv"):
        assert (d / name).exists()
    if (d / "events.csv").exists():  # written only where a run had an event: every row one of these runs'
        assert set(report.read(d / "events.csv")["run_id"]) <= set(runs["run_id"])
    steps = report.read(d / "steps.csv")
    assert len(steps) == 4 * 20
    # one progress line per run and the summary
    for rid in runs["run_id"]:
        assert rid in proc.stdout
    counts = runs["status"].value_counts()
    assert "4 runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) in proc.stdout


@pytest.mark.slow
def test_every_row_is_honest(smoke_reports):
    runs = report.read(smoke_reports["0"][0] / "runs.csv")
    for row in runs.to_dict("records"):
        assert Path(row["data_path"]).is_file()
        assert data.sha256_file(Path(row["data_path"])) == row["data_sha256"]
        assert row["torch_version"] == torch.__version__
        assert row["runtime_s"] > 0 and row["steps_per_s"] > 0 and row["samples_per_s"] > 0
        assert row["peak_rss_mb"] > 0
        assert row["status"] in detect.STATUSES


@pytest.mark.slow
def test_xdist_gives_exactly_the_rows_of_one_process(smoke_reports):
    (d0, _), (d2, _) = smoke_reports["0"], smoke_reports["2"]
    a, b = report.read(d0 / "runs.csv"), report.read(d2 / "runs.csv")
    cols = ["run_id", "status", "final_loss", "val_loss", "weights_sha256"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert set(b["worker"]) <= {"gw0", "gw1"} and a["worker"].isna().all()
    sa, sb = report.read(d0 / "steps.csv"), report.read(d2 / "steps.csv")
    trace = ["run_id", "step", "lr", "loss", "grad_norm"]
    pd.testing.assert_frame_equal(sa[trace], sb[trace])


@pytest.mark.slow
def test_baseline_round_trip_and_failures(smoke_reports, tmp_path):
    d0, _ = smoke_reports["0"]
    base = tmp_path / "base" / "runs.csv"
    common = ["run", "--grid", "smoke", "--steps", "20", "--devices", "cpu", "--data-dir", str(d0 / "data"),
              "--models", "gpt", "--baseline", str(base)]
    proc = cli(*common, "--report-dir", str(tmp_path / "r0"))  # nothing to judge against: fails
    assert proc.returncode == 1 and "no baseline for grid smoke on cpu" in proc.stdout and "--allow-no-baseline" in proc.stdout
    proc = cli(*common, "--report-dir", str(tmp_path / "r1"), "--update-baseline")
    assert proc.returncode == 0 and base.exists() and "baseline updated" in proc.stdout, proc.stdout[-2000:]
    proc = cli(*common, "--report-dir", str(tmp_path / "r2"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert set(report.read(tmp_path / "r2" / "runs.csv")["baseline_check"]) == {"identical"}

    df = report.read(base)
    noise = write_rounding_noise(base)  # as calibration measures it, from the unedited baseline
    noise = noise.rename(noise.with_suffix(".measured"))
    df.loc[0, ["status", "weights_sha256"]] = ["diverged_nonfinite", "x"]  # the candidate's "converged" is better
    df.loc[1, "final_loss"] = df.loc[1, "final_loss"] * 0.8  # the candidate is 25% worse
    df.loc[1, "weights_sha256"] = "y"
    report.write_atomic(base, df)
    proc = cli(*common, "--report-dir", str(tmp_path / "r3"))  # no noise measured: nothing to judge by
    assert proc.returncode == 1 and "final_loss +25.00%" in proc.stdout
    assert "no noise to judge the difference against" in proc.stdout
    checks = report.read(tmp_path / "r3" / "runs.csv").set_index("run_id")["baseline_check"]
    assert checks[df.loc[1, "run_id"]] == "unjudged", checks
    assert checks[df.loc[0, "run_id"]] == "status_changed", checks  # a flip out of a divergence needs no noise
    noise.rename(base.parent / "tolerances.csv")
    proc = cli(*common, "--report-dir", str(tmp_path / "r4"))
    assert proc.returncode == 1
    assert "status_changed: improvement beyond the margin" in proc.stdout and "--allow-improved" in proc.stdout
    assert "regressed: regression: final_loss" in proc.stdout
    checks = report.read(tmp_path / "r4" / "runs.csv").set_index("run_id")["baseline_check"]
    assert sorted(checks) == ["regressed", "status_changed"]
    proc = cli(*common, "--report-dir", str(tmp_path / "r5"), "--allow-improved", "--margin", "0.5")
    assert proc.returncode == 0, proc.stdout[-2000:]  # 25% is within a 50% margin: changed, which passes


def test_malformed_baseline_is_one_line(tmp_path):
    bad = tmp_path / "runs.csv"
    bad.write_text("not,a\nbaseline,file\n")
    proc = cli("run", "--grid", "smoke", "--devices", "cpu", "--baseline", str(bad), "--report-dir", str(tmp_path / "r"))
    assert proc.returncode != 0 and "missing column" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_detect_classifies_a_users_steps_table(tmp_path):
    from tests.traces import healthy, nan_at

    frames = []
    for run_id, (steps, loss, grad) in {"good": healthy(), "bad": nan_at(50)}.items():
        frames.append(pd.DataFrame({"run_id": run_id, "step": steps, "loss": loss, "grad_norm": grad}))
    src = tmp_path / "mine.csv"
    pd.concat(frames).to_csv(src, index=False, na_rep="nan")  # a blank cell would mean "not logged"
    proc = cli("detect", str(src), "--out", str(tmp_path / "out"), "--loss-floor", "1.7")
    assert proc.returncode == 0, proc.stderr
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run_id")
    assert runs.loc["good", "status"] == "converged" and runs.loc["bad", "status"] == "diverged_nonfinite"
    assert runs.loc["bad", "divergence_step"] == 50
    ev = pd.read_csv(tmp_path / "out" / "events.csv")
    assert list(ev.columns) == report.EVENTS_COLUMNS and ev.iloc[0]["kind"] == "nonfinite"


@pytest.mark.parametrize("content,pattern", [
    ("run_id,loss\nx,2.0\n", "no step column"),
    ("run_id,step,loss,grad_norm\nx,1,abc,1.0\n", "column loss has a non-numeric value 'abc' (data row 1)"),
    ("", "empty file"),
    ("run_id,step,loss,grad_norm\n", "no rows"),
])
def test_detect_bad_tables_are_one_line(tmp_path, content, pattern):
    src = tmp_path / "steps.csv"
    src.write_text(content)
    assert_one_line_error(cli("detect", str(src)), 2, pattern)


def test_a_missing_table_is_one_line_without_a_traceback(tmp_path):
    assert_one_line_error(diagnostics("detect", str(tmp_path / "absent.csv")), 2, "no such file")


@pytest.mark.slow
def test_a_killed_session_keeps_every_finished_run_and_resumes(tmp_path):
    """Rows are appended (and fsynced) as each run finishes: SIGKILL after the first one loses
    nothing that finished and leaves no partial line. The same command again refuses in one line
    naming --resume (nothing deleted); with --resume it keeps the finished runs, trains only the
    rest, and leaves no lock file."""
    import signal
    import time

    n_steps = 60  # about a second a run: the kill lands between the first run's end and the last's
    d = tmp_path / "r"
    args = ["run", "--grid", "smoke", "--steps", str(n_steps), "--devices", "cpu", "--report-dir", str(d), "--data-dir",
            str(tmp_path / "data"), "--quiet", "--allow-no-baseline"]
    proc = subprocess.Popen([sys.executable, "-m", "diagnostics", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if (d / "runs.csv").exists() and len((d / "runs.csv").read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    runs = report.read(d / "runs.csv")
    steps = report.read(d / "steps.csv")
    assert 1 <= len(runs) < 4 and runs["status"].isin(detect.STATUSES).all()
    assert set(steps["run_id"]) >= set(runs["run_id"])  # each finished run's trace is there too
    assert (steps.groupby("run_id").size()[list(runs["run_id"])] == n_steps).all()

    again = cli(*args)
    assert_one_line_error(again, 2, "holds an interrupted session with")
    assert "--resume" in again.stderr and len(report.read(d / "runs.csv")) == len(runs)
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert f"resumed: kept {len(runs)} finished run(s) of the interrupted session, training the other " \
           f"{4 - len(runs)}" in resumed.stdout
    after = report.read(d / "runs.csv")
    assert len(after) == 4 and after["run_id"].is_unique
    kept = after.set_index("run_id").loc[list(runs["run_id"]), "started_at"]
    assert (kept.values == runs.set_index("run_id")["started_at"].values).all()  # not trained again
    assert (report.read(d / "steps.csv").groupby("run_id").size() == n_steps).all()
    assert not list(d.glob("*.lock"))


def test_collect_only_never_deletes_a_report(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "runs.csv").write_text("run_id\nkept\n")
    proc = run("-m", "pytest", "suites/test_convergence.py", "--grid", "smoke", "--devices", "cpu", "--collect-only",
               "-q", "--report-dir", str(d), "-p", "no:cacheprovider")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (d / "runs.csv").read_text() == "run_id\nkept\n"


@pytest.mark.slow
def test_a_report_directory_belongs_to_one_session_at_a_time(tmp_path):
    """Two `diagnostics run` on one --report-dir: the second refuses in one line naming the
    first, and the first's report is whole; once it ended, the directory is free again."""
    import time

    d = tmp_path / "r"
    args = ["run", "--grid", "smoke", "--steps", "20", "--devices", "cpu", "--report-dir", str(d), "--data-dir",
            str(tmp_path / "data"), "--allow-no-baseline", "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "diagnostics", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (d / report.OWNER).exists() and time.time() < deadline:
        time.sleep(0.1)
    second = cli(*args)
    out, _ = first.communicate(timeout=600)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert "is in use by `diagnostics run` (pid" in second.stderr and f"pid {first.pid}," in second.stderr
    assert first.returncode == 0, out[-2000:]
    runs = report.read(d / report.RUNS)
    assert len(runs) == 4 and runs["run_id"].is_unique and not (d / report.OWNER).exists()
    assert cli(*args, "--models", "gpt", "--optimizers", "adamw").returncode == 0  # free again


def test_a_grid_without_any_baseline_says_so_once_before_training_and_fails_once(tmp_path):
    proc = cli("run", "--grid", "smoke", "--steps", "6", "--devices", "cpu", "--report-dir", str(tmp_path / "r"),
               "--data-dir", str(tmp_path / "data"), "--baseline", str(tmp_path / "none"), "-n", "0")
    out = proc.stdout
    assert proc.returncode == 1, out[-2000:]
    first = out.index("no baseline for grid smoke on cpu: none of its 4 runs is in")
    assert first < out.index("gpt-adamw-cosine-linear-cpu-fp32-s0")  # before any run's line
    assert "`python -m diagnostics calibrate --grid smoke --devices cpu`" in out and "24 runs" in out
    assert out.count("FAILED: no baseline for grid smoke") == 1 and "FAILED gpt" not in out
    assert len(report.read(tmp_path / "r" / "runs.csv")) == 4  # the grid was trained all the same


def test_the_calibration_estimate_counts_the_reruns_of_the_perturbed_seeds():
    from diagnostics.grid.spec import GridOptions, resolve_grid
    from diagnostics.judge import calibrate

    specs = resolve_grid(GridOptions(grid="smoke", seeds="0,1,2", devices=("cpu",))).specs()
    minutes, runs = calibrate.estimate_minutes(specs, perturb_seeds=2)
    assert runs == len(specs) + 5 * len(specs) * 2 // 3  # 5 perturbations of seeds 0 and 1
    assert minutes == pytest.approx(runs * 60 * calibrate.SECONDS_PER_RUN_STEP["cpu"] / 60)
