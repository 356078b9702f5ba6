import math
import multiprocessing as mp

import pytest

from diagnostics import report


def row(run_id, loss):
    return {"run_id": run_id, "status": "converged", "final_loss": loss}


def test_floats_round_trip_exactly(tmp_path):
    p = tmp_path / "runs.csv"
    values = [0.1 + 0.2, 1 / 3, 2.0**-40, 123456.789e10, math.nan]
    report.append(p, [row(f"r{i}", v) for i, v in enumerate(values)], report.RUNS_COLUMNS)
    df = report.read(p)
    got = df["final_loss"].tolist()
    assert got[:4] == values[:4] and math.isnan(got[4])
    assert list(df.columns) == report.RUNS_COLUMNS


def _append_many(args):
    path, worker = args
    for i in range(50):
        report.append(path, [row(f"{worker}-{i:02d}", float(i))], report.RUNS_COLUMNS)


def test_concurrent_appends_lose_and_duplicate_nothing(tmp_path):
    p = tmp_path / "runs.csv"
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(p, w) for w in "abcd"])
    df = report.read(p)
    assert len(df) == 200 and df["run_id"].is_unique


def test_finalize_sorts_without_dropping(tmp_path):
    p = tmp_path / "steps.csv"
    rows = [{"run_id": r, "step": s, "lr": 1.0, "loss": 1.0, "grad_norm": 1.0, "elapsed_s": 0.1}
            for r in ("b", "a") for s in (2, 1)]
    report.append(p, rows, report.STEPS_COLUMNS)
    report.finalize(tmp_path)
    df = report.read(p)
    assert list(zip(df.run_id, df.step)) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]


def test_reset_removes_only_report_files(tmp_path):
    for name in ("runs.csv", "steps.csv", "env.csv", "keep.txt"):
        (tmp_path / name).write_text("x")
    report.reset(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    ("", "empty file"),
    ("run_id,status\nx,converged\n", "missing column"),
    ('a,b\n"unterminated,1\n', "not a readable CSV|missing column"),
])
def test_bad_csvs_are_one_line_errors(tmp_path, content, match):
    p = tmp_path / "runs.csv"
    if content is not None:
        p.write_text(content)
    with pytest.raises(report.ReportError, match=match) as e:
        report.read(p)
    assert "\n" not in str(e.value)


def test_missing_fields_lists_empty_required_columns():
    r = {c: 1 for c in report.REQUIRED + report.REQUIRED_LOSSES}
    r["status"] = "converged"
    assert report.missing_fields(r) == []
    r["final_loss"] = math.nan
    r["data_path"] = ""
    assert report.missing_fields(r) == ["data_path", "final_loss"]
    r["status"] = "diverged_nonfinite"  # a diverged run may have no finite loss at all
    assert report.missing_fields(r) == ["data_path"]


def test_merge_keeps_repro_results_and_recomputes_the_seed_table(tmp_path):
    from diagnostics.judge import repro
    from tests.conftest import cli

    base = dict(suite="convergence", model="gpt", optimizer="adamw", scheduler="cosine", warmup="none", device="cpu",
                precision="fp32", lr_scale=1.0, steps=200, model_size="tiny", status="converged")
    for k, seeds in enumerate(((0, 1), (2,))):  # two shards of one config's three seeds
        d = tmp_path / f"shard{k}"
        rows = [dict(base, run_id=f"gpt-s{s}", seed=s, final_loss=1.8 + 0.01 * s, val_loss=1.7) for s in seeds]
        report.write_atomic(d / report.RUNS, report.frame(rows, report.RUNS_COLUMNS))
        report.write_atomic(d / repro.REPRO, report.frame([dict(run_id=f"gpt-s{seeds[0]}", check="twice_same",
                                                                result="identical")], repro.REPRO_COLUMNS))
    proc = cli("merge", str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    assert len(report.read_csv(tmp_path / "m" / repro.REPRO)) == 2
    seeds = report.read_csv(tmp_path / "m" / repro.SEEDS)
    assert seeds.iloc[0]["n_seeds"] == 3 and seeds.iloc[0]["seeds"] == "0,1,2"  # over all shards, not per shard
