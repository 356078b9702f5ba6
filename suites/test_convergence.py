"""Convergence grid: every model x optimizer x scheduler x warmup x device x precision x seed.

Each test trains one grid point, writes its rows to the report directory and checks the run
against the committed baseline (same status, final loss within the band). Without a baseline
row it checks that the run finished with a full record.
"""

from diagnostics import compare, report, train


def progress_line(row: dict, check: compare.BaselineCheck) -> str:
    return (f"{row['run_id']:<48} {row['status']:<19} final {float(row.get('final_loss', 'nan')):8.4f}  "
            f"{float(row.get('runtime_s', 'nan')):6.1f}s  {check.label}")


def test_convergence(run_spec, diagnostics_session, record_property):
    s = diagnostics_session
    result = train.run(run_spec, s.data_dir, s.data_root, worker=s.worker)
    check = compare.check(result.row, s.baseline_row(result.row))
    result.row["baseline_check"] = check.label
    s.record(result)
    record_property("diagnostics_run", progress_line(result.row, check))

    if result.status == "error" and check.label == "no baseline":
        raise AssertionError(f"{run_spec.id} raised: {result.row['status_reason']}")
    if result.status != "error":
        missing = report.missing_fields(result.row)
        assert not missing, f"{run_spec.id}: incomplete record, empty {missing}"
    if not s.update_baseline:
        assert check.ok, check.message
