"""What a resumed session keeps of an interrupted one (session.resumable): its own grid points,
unchanged, trained by the same code on the same stack."""

import pandas as pd

from diagnostics import session
from diagnostics.grid.spec import GridOptions, resolve_grid
from diagnostics.run import env, train


def grid_specs():
    return resolve_grid(GridOptions(models="gpt", optimizers="adamw", schedulers="constant,cosine", warmup="none",
                                    steps="20", devices=("cpu",))).specs()


def row_of(spec, **changes):
    return {**train.identity(spec), **env.versions(), "status": "converged", **changes}


def test_a_finished_run_of_the_same_grid_point_code_and_stack_is_kept():
    a, b = grid_specs()
    runs = pd.DataFrame([row_of(a), row_of(b)])
    kept, dropped = session.resumable(runs, [a, b], env.versions())
    assert list(kept["run_id"]) == [a.id, b.id] and dropped == {}


def test_changed_points_other_code_errors_and_strangers_are_trained_again():
    a, b = grid_specs()
    other = resolve_grid(GridOptions(models="gpt", optimizers="sgd", schedulers="constant", warmup="none",
                                     steps="20", devices=("cpu",))).specs()[0]
    runs = pd.DataFrame([row_of(a, steps=30), row_of(b, git_sha="0" * 40), row_of(other)])
    kept, dropped = session.resumable(runs, [a, b], env.versions())
    assert kept.empty
    assert dropped == {"its grid point changed": 1, "another code version or stack": 1, "not in this grid": 1}
    kept, dropped = session.resumable(pd.DataFrame([row_of(a, status="error")]), [a], env.versions())
    assert kept.empty and dropped == {"it errored": 1}


def test_empty_cells_match_empty_cells_only():
    assert session.same(float("nan"), "") and session.same(None, float("nan"))
    assert session.same(1, 1.0) and session.same("2.14.1", "2.14.1")
    assert not session.same("", "x") and not session.same(1, 2)


def test_only_a_session_that_did_not_finish_leaves_its_directory_unfinished(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "runs.csv").write_text("run_id,status\na,converged\nb,converged\n")
    (d / session.SESSION_FILE).write_text("old-token")
    assert session.unfinished(d) == 0  # finished, or written before sessions marked themselves running
    session.refuse_unfinished(d)
    (d / session.RUNNING_FILE).write_text("old-token")  # a session that was killed: the mark stays
    assert session.unfinished(d) == 2
    import pytest

    from diagnostics import report

    with pytest.raises(report.ReportError, match="holds an interrupted session with 2 finished run"):
        session.refuse_unfinished(d)
