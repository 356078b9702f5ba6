"""The pytest plugin in a pytest of its own (pytester, in this process): parametrization and ids, stated skips,
option errors, what a session writes, and worker pinning."""

import pandas as pd
import pytest

from diagnostics.grid import devices

SUITE = """
GRID = "smoke"

def test_convergence(run_spec, grid_point):
    grid_point(run_spec)
"""


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_grid=SUITE)
    return pytester


def run(pytester, *args):
    return pytester.runpytest_inprocess("-p", "diagnostics.pytest_plugin", "-p", "no:cacheprovider", *args)


def test_the_grid_is_parametrized_by_id_without_touching_a_report(suite):
    (suite.path / "reports" / "latest").mkdir(parents=True)
    (suite.path / "reports" / "latest" / "runs.csv").write_text("kept\n")
    result = run(suite, "--collect-only", "-q", "--devices", "cpu", "--optimizers", "adamw")
    result.stdout.fnmatch_lines(["test_grid.py::test_convergence[gpt-adamw-cosine-linear-cpu-fp32-s0]",
                                 "test_grid.py::test_convergence[resnet-adamw-cosine-linear-cpu-fp32-s0]",
                                 "2 tests collected*"])
    assert (suite.path / "reports" / "latest" / "runs.csv").read_text() == "kept\n"  # looking never deletes


def test_a_bad_option_is_one_usage_line(suite):
    result = run(suite, "--devices", "cpu", "--models", "gtp")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown models 'gtp'; valid: gpt, resnet, resnet18, vit*"])


@pytest.mark.slow
def test_a_session_trains_records_and_states_its_skips(suite):
    result = run(suite, "--devices", "cpu", "--models", "gpt", "--optimizers", "adamw", "--precision", "fp32,tf32",
                 "--steps", "4", "--allow-no-baseline", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*tf32 is a CUDA precision*"])  # the reason, never a silent skip
    runs = pd.read_csv(suite.path / "reports" / "latest" / "runs.csv")
    assert sorted(runs["run_id"]) == ["gpt-adamw-cosine-linear-cpu-fp32-s0", "gpt-adamw-cosine-linear-cpu-tf32-s0"]
    assert (suite.path / "reports" / "latest" / "env.csv").exists()


def test_workers_pin_round_robin_and_share_the_cores():
    assert [devices.worker_device_index(w, 4) for w in range(6)] == [0, 1, 2, 3, 0, 1]
    assert devices.threads_per_worker(4, cpu_count=16) == 4 and devices.threads_per_worker(32, cpu_count=16) == 1
