"""``diagnostics summary`` (Markdown for CI) and ``release`` / ``bisect`` (with stand-in
environments: the real ones download several GB)."""

import sys
from pathlib import Path

import pandas as pd
import pytest

from diagnostics import release, report
from diagnostics.judge import compare, verdicts
from diagnostics.judge.verdicts import Policy
from diagnostics.present import summary
from tests.conftest import cli


def runs(**statuses):
    return pd.DataFrame([dict(run_id=k, status=v.split(":")[0], status_reason=v.split(":", 1)[-1] if ":" in v else "",
                              final_loss=1.0, val_metric=0.5, runtime_s=2.0,
                              baseline_check="identical" if k != "b" else "regressed")
                         for k, v in statuses.items()])


def test_summary_lists_failures_first_then_every_run():
    md = summary.markdown(runs(a="converged", b="converged", c="error:RuntimeError: boom | x",
                               d="skipped:torchvision unavailable"))
    assert md.index("### Failing (2)") < md.index("### Every run (4)")
    failing = md[md.index("### Failing"):md.index("### Every run")]
    assert "| b | regressed | regression |" in failing and "| c |" in failing and "| a |" not in failing
    assert "boom \\| x" in md  # a pipe in a reason does not break the table
    assert "1 skipped" in md and "1 error" in md


def test_summary_with_a_compare_csv_uses_its_verdicts_and_policy():
    compared = pd.DataFrame([dict(run_id="a", verdict="changed", failure="", detail="final loss +1%"),
                             dict(run_id="b", verdict="new", failure="no baseline", detail="")])
    md = summary.markdown(runs(a="converged", b="converged"), compared)
    assert "### Failing (1)" in md and "### Changed, passing (1)" in md and "final loss +1%" in md
    nothing = pd.DataFrame([dict(run_id="a", verdict="new", failure="", detail="")])
    assert "Nothing was judged" in summary.markdown(runs(a="converged"), nothing)
    blind = compared.assign(verdict="equivalent", failure="", mde=[0.12, 0.01], n_seeds_judged=1)
    md = summary.markdown(runs(a="converged", b="converged"), blind)
    assert "Cannot see a 5% change at the seeds run (1)" in md and "| a | equivalent | 1 | 12.0% |" in md
    assert "Cannot see" not in summary.markdown(runs(a="converged", b="converged"), blind.assign(mde=0.01))
    allowed = summary.markdown(runs(a="converged", b="converged"), policy=Policy(allow_improved=True))
    assert "### Failing (1)" in allowed  # b regressed fails whatever is allowed


def test_summary_command_reads_a_report_and_rejects_bad_input(smoke_reports, tmp_path):
    d, _ = smoke_reports["0"]
    proc = cli("summary", str(d), "--allow-no-baseline")
    assert proc.returncode == 0 and "**4 runs**" in proc.stdout and "### Every run (4)" in proc.stdout
    bad = cli("summary", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no runs.csv" in bad.stderr


def test_a_command_in_an_environment_runs_in_that_environment_s_python():
    """Environments.execute, which the stand-in releases below replace: ``python -m diagnostics
    ARGS`` in the candidate's environment (here this Python), from the checkout."""
    class Here(release.Environments):
        def python(self, cand):
            return Path(sys.executable)

    done = Here().execute("2.14", ["env"], capture=True)
    assert done.returncode == 0 and "torch_version" in done.stdout, done.stderr[-2000:]
    assert Here().execute("2.14", ["bogus"], capture=True).returncode == 2


def test_release_refuses_versions_it_cannot_run(tmp_path):
    for version, why in (("1.13.1", "older than 2.0"), ("latest", "not a torch version .*nor a wheel"),
                         (str(tmp_path / "torch-9.whl"), "no such wheel file"), (str(tmp_path), "holds 0 torch wheels")):
        with pytest.raises(release.ReleaseError, match=why):
            release.check_version(version)
    for name in ("torch-2.16.0.dev20261130+cpu-cp311-cp311-linux_x86_64.whl", "torchvision-0.31.0.dev20261130-x.whl"):
        (tmp_path / name).write_bytes(b"")
    nightly = release.candidate(str(tmp_path))
    assert nightly.label == "2.16.0.dev20261130+cpu" and len(nightly.wheels) == 2
    assert nightly.is_torch("2.16.0.dev20261130+cpu") and not nightly.is_torch("2.16.0")  # a wheel is exact
    assert release.candidate("2.14.1").is_torch("2.14.1+cu128")  # a release ignores the build tag
    proc = cli("release", "2.14.1", "1.13.1", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "older than 2.0" in proc.stderr
    proc = cli("release", "2.14.1", "2.14.1", "--out", "unused")
    assert proc.returncode == 2 and "one version twice" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def noise_for(report_dir, relative=1e-2):
    """A tolerances table for a report's configs: every value's noise ``relative`` of it, 10 df."""
    runs = report.read(Path(report_dir) / "runs.csv")
    tol = runs[compare.CONFIG].assign(run_id=runs["run_id"], statuses_seen="converged", status_flips=0, status_runs=10)
    for v in ("final_loss", "val_loss", "val_metric"):
        tol[f"{v}_noise"], tol[f"{v}_df"] = relative * runs[v].abs(), 10
    return tol


class StandInReleases(release.Environments):
    """Every "release" is this Python, run in this process (the torch import paid once); those in
    ``changed`` train with one ulp added to every gradient (calibration's grad1 perturbation): a
    change within noise ("equivalent"), which a bisect that counts any bit as a change must locate."""

    def __init__(self, changed):
        super().__init__()
        self.changed, self.built = set(changed), []

    def execute(self, version, args, capture=False):
        self.built.append(str(version))  # per trained release: its grid (and, where traced, its trace)
        perturbed = str(version) in self.changed and args[0] == "run"
        done = cli(*args, *(["--perturb", "grad1"] if perturbed else []))
        if not capture:
            print(done.stdout, end="")
            print(done.stderr, end="", file=sys.stderr)
        return done

    def prepare(self, version):
        """Nothing to build ahead."""


@pytest.mark.slow
def test_bisect_finds_the_first_release_that_changed_and_trains_each_once(tmp_path):
    envs = StandInReleases(changed={"2.12", "2.13", "2.14"})
    grid = ["--grid", "smoke", "--models", "gpt", "--optimizers", "adamw", "--steps", "12", "--devices", "cpu",
            "--data-dir", str(tmp_path / "data")]
    sessions = release.Sessions(envs, grid, tmp_path, check_versions=False, traces=False)  # bisect needs none
    versions = ["2.10", "2.11", "2.12", "2.13", "2.14"]
    tol = noise_for(sessions.run("2.10"))
    assert release.bisect(versions, sessions, tol).loc[0, "first_changed"] == ""  # within noise: the same verdict
    table = release.bisect(versions, sessions, tol, equivalent_is_same=False)
    assert len(table) == 1 and table.loc[0, "first_changed"] == "2.12" and table.loc[0, "last_same"] == "2.11"
    assert table.loc[0, "verdict"] == "equivalent" and not release.failing(table, Policy())
    assert release.failing(table.assign(verdict="regressed"), Policy())  # bisect exits 1 on these, as compare
    assert sorted(envs.built) == sorted(set(envs.built))  # each release trained once
    assert "2.13" not in envs.built  # binary search: 2.10, 2.14, 2.12, 2.11
    same = release.bisect(["2.10", "2.11"], sessions, equivalent_is_same=False)
    assert same.loc[0, "first_changed"] == "" and same.loc[0, "verdict"] == "identical"
    init = list((tmp_path / "init").glob("*.pt"))
    assert [p.name for p in init] == ["gpt-tiny-s0.pt"]  # every release started from these weights
    both = release.judged(tmp_path / "torch-2.10", tmp_path / "torch-2.12", None, verdicts.MARGIN, Policy())
    assert both.loc[0, "verdict"] != "identical"
    assert (Path(tmp_path) / "torch-2.12" / "runs.csv").exists()
    with pytest.raises(release.ReleaseError, match="holds runs of torch 2.1"):  # a stand-in's report is no 2.10
        release.Sessions(envs, grid, tmp_path).run("2.10")
    other = release.Sessions(envs, [*grid[:-2], "--steps", "13", *grid[-2:]], tmp_path, check_versions=False)
    with pytest.raises(release.ReleaseError, match="trained with .*--steps 12.*delete it or choose another --out"):
        other.run("2.10")  # a cached session is reused only for the same grid and options


def kept_changelog(folder: Path, statuses: dict[str, str], losses: dict[str, float]) -> None:
    """A changelog's kept sessions (``folder/torch-V/runs.csv``, one config, two seeds: the same
    bits where status and loss are the same) and its explain.csv, a finding for each consecutive pair."""
    from tests import rows

    versions = list(statuses)
    for v in versions:
        d = folder / f"torch-{v}"
        d.mkdir(parents=True)
        table = rows.frame([rows.row(run_id=f"gpt-s{s}", seed=s, status=statuses[v], final_loss=losses[v] + s * 1e-3,
                                     val_loss=losses[v], val_metric=losses[v],
                                     weights_sha256=f"{statuses[v]}-{losses[v]}-{s}",
                                     torch_version=v, grid="changelog", initial_loss=3.5, divergence_step=float("nan"),
                                     steps_per_s=60.0, peak_rss_mb=800.0, peak_device_mem_mb=float("nan"))
                            for s in (0, 1)])
        report.write_atomic(d / report.RUNS, table)
    explain = pd.DataFrame([dict(transition=f"{a} -> {b}", family="gpt-adamw-cpu-fp32", phase="forward",
                                 op=f"aten::op_{b}", finding="changed kernel", first_step=1, count=1, capability="",
                                 detail="", module="blocks.0.attn", frames="", seq=1, signature="", repro="")
                            for a, b in zip(versions, versions[1:])])
    explain.to_csv(folder / "explain.csv", index=False)


def test_bisect_of_a_changelog_s_kept_sessions_trains_nothing_and_reads_why_from_its_explain(tmp_path):
    statuses = {"2.8": "diverged_nonfinite", "2.9": "diverged_nonfinite", "2.10": "diverged_nonfinite",
                "2.11": "converged", "2.12": "converged"}
    kept_changelog(tmp_path / "cl", statuses, {v: 2.0 for v in statuses})
    out = tmp_path / "out"
    proc = cli("bisect", *statuses, "--sessions", tmp_path / "cl", "--out", out, "--allow-improved")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = report.read(out / "bisect.csv").iloc[0]  # versions read as text: 2.10 is no 2.1
    assert (row["first_changed"], row["last_same"], row["verdict"]) == ("2.11", "2.10", "status_changed")
    assert row["why"].startswith("changed kernels: aten::op_2.11 (forward in blocks.0.attn")  # 2.10 -> 2.11's own
    assert not (tmp_path / "cl" / "torch-2.8" / "session-complete").exists()  # read, never trained
    proc = cli("bisect", *statuses, "--sessions", tmp_path / "cl", "--out", out)  # a status change for the better
    assert proc.returncode == 1 and "improvement beyond the margin" in proc.stdout  # ... is no regression
    # a release the folder does not hold, and a grid option that cannot apply to kept sessions: one line each
    proc = cli("bisect", "2.8", "2.13", "--sessions", tmp_path / "cl", "--out", out)
    assert proc.returncode == 2 and "torch-2.13 holds no runs.csv" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("bisect", "2.8", "2.12", "--layout", "left", "--sessions", tmp_path / "cl", "--out", out)
    assert proc.returncode == 2 and "--layout cannot apply" in proc.stderr


def test_a_bisect_between_releases_the_changelog_never_paired_says_so():
    from diagnostics.release import explain

    rows = explain.of_transition(Path("reports/releases"), "2.0.1", "2.15.0")
    assert list(rows["finding"]) == [explain.NOT_TRACED] and "holds no 2.0.1 -> 2.15.0" in rows.loc[0, "detail"]
    assert len(explain.of_transition(Path("reports/releases"), "2.4.1", "2.5.1")) > 10
