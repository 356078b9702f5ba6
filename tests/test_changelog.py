"""Environments over many releases (the disk they take, the NumPy of their era) and the changelog
of consecutive releases, with stand-in environments (this Python) as the release tests use."""

import os
import stat
import time
from pathlib import Path

import pandas as pd
import pytest

from diagnostics import release, report
from diagnostics.judge import compare
from diagnostics.present import changelog
from diagnostics.release import environments, questions
from tests.test_summary_and_release import StandInReleases


def ready_env(root: Path, label: str, age: float) -> Path:
    env = root / f"torch-{label}"
    env.mkdir(parents=True)
    (env / release.READY).write_text(label)
    then = time.time() - age
    os.utime(env / release.READY, (then, then))
    return env


def test_building_one_more_environment_removes_the_least_recently_used_not_in_use(tmp_path):
    envs = release.Environments(tmp_path, keep=3)
    old, older, oldest = (ready_env(tmp_path, v, age) for v, age in (("2.3.1", 10), ("2.2.2", 20), ("2.1.2", 30)))
    envs.in_use = {"2.1.2", "2.4.1"}  # 2.1.2 trains now; 2.4.1 is the one being built
    envs.make_room("2.4.1")
    assert oldest.exists() and not older.exists() and old.exists()  # the oldest is in use: the next one goes
    envs.keep = None
    envs.make_room("2.4.1")  # no count limit: nothing more goes while the disk has room
    assert old.exists()


def test_too_little_disk_removes_unused_environments_then_refuses_in_one_line(tmp_path, monkeypatch):
    envs = release.Environments(tmp_path)
    unused = ready_env(tmp_path, "2.5.1", 5)
    free = {"bytes": release.ENV_BYTES - 1}

    def usage(path):
        return type("Usage", (), dict(free=free["bytes"]))()

    def rmtree(path, ignore_errors=False):
        free["bytes"] += release.ENV_BYTES
        os.remove(Path(path) / release.READY)
        os.rmdir(path)

    monkeypatch.setattr(environments.shutil, "disk_usage", usage)
    monkeypatch.setattr(environments.shutil, "rmtree", rmtree)
    envs.make_room("2.6.0")
    assert not unused.exists()  # removed, and that made room
    free["bytes"] = 1024**3
    with pytest.raises(release.ReleaseError, match=r"torch 2.6.0: 1.0 GB free in .*needs ~7 GB"):
        envs.make_room("2.6.0")


def fake_python(tmp_path: Path) -> Path:
    """A "python" whose NumPy check fails until the era's NumPy was installed (a marker file)."""
    py = tmp_path / "python"
    py.write_text(f"#!/bin/sh\ntest -e {tmp_path}/numpy1\n")
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return py


def test_an_old_torch_gets_the_numpy_of_its_era_and_a_new_one_does_not(tmp_path, monkeypatch):
    calls = []

    def pip_anywhere(python, args, log=None):
        calls.append(args)
        if release.ERA_NUMPY in args:
            (tmp_path / "numpy1").write_text("")
        return release.TORCHVISION not in args  # no torchvision installs beside this torch

    monkeypatch.setattr(environments, "pip_anywhere", pip_anywhere)
    envs = release.Environments(tmp_path)
    envs.install(release.Candidate("2.0.1"), fake_python(tmp_path))
    assert calls[0][-1] == release.TORCHVISION and "torch==2.0.1" in calls[0]  # pip pairs the torchvision
    assert release.TORCHVISION not in calls[1]  # none installs beside it: the environment goes without
    assert calls[2][0] == release.ERA_NUMPY and "torch==2.0.1" in calls[2]
    calls.clear()
    envs.install(release.Candidate("2.15.0"), fake_python(tmp_path))  # the check passes now: no pin
    assert not any(release.ERA_NUMPY in c for c in calls)


@pytest.mark.slow
def test_changelog_judges_each_transition_trains_each_release_once_and_resumes(tmp_path):
    envs = StandInReleases(changed={"2.12"})
    grid = ["--grid", "smoke", "--models", "gpt", "--optimizers", "adamw", "--steps", "8", "--devices", "cpu",
            "--data-dir", str(tmp_path / "data")]
    sessions = release.Sessions(envs, grid, tmp_path, check_versions=False)
    versions = [release.Candidate(v) for v in ("2.10", "2.11", "2.12")]
    seen = []
    table = release.changelog(versions, sessions, on_transition=lambda t: seen.append(len(t)))
    assert seen == [1, 2] and list(table.columns) == release.CHANGELOG_COLUMNS
    verdicts = dict(zip(table["to_version"], table["verdict"]))
    # 2.12 adds an ulp to every gradient: bits change at 2.11 -> 2.12 only
    assert verdicts["2.11"] == "identical" and verdicts["2.12"] != "identical"
    assert sorted(envs.built) == sorted(2 * ["2.10", "2.11", "2.12"])  # trained and traced once each
    counts = changelog.counts(table)
    assert counts["identical"].tolist() == [1, 0] and counts["bits_changed_in"].iloc[0] == ""
    assert counts["bits_changed_in"].iloc[1] == "gpt optimizer=adamw scheduler=cosine precision=fp32"
    # an interruption: 2.12's session left unfinished is trained again, the others are reused
    (tmp_path / "torch-2.12" / release.COMPLETE).unlink()
    envs.built.clear()
    again = release.changelog(versions, release.Sessions(envs, grid, tmp_path, check_versions=False))
    assert envs.built == ["2.12", "2.12"] and again["verdict"].tolist() == table["verdict"].tolist()
    page = changelog.write(tmp_path, table)
    assert page.exists() and (tmp_path / changelog.FIGURE).stat().st_size > 0
    # the command rewrites bisect.csv over every release it holds, from the kept sessions
    from diagnostics.cli import rebisect

    rebisect(tmp_path, ["2.10", "2.11", "2.12"], None, compare.MARGIN)
    bisected = pd.read_csv(tmp_path / "bisect.csv", dtype=str, keep_default_na=False)
    assert bisected[["last_same", "first_changed"]].values.tolist() == [["2.12", ""]]  # an ulp: within noise
    assert bisected["verdict"].tolist() == [verdicts["2.12"]]
    before = (tmp_path / "bisect.csv").read_bytes()
    rebisect(tmp_path, ["2.9", "2.10"], None, compare.MARGIN)  # a release without a session here: left
    assert (tmp_path / "bisect.csv").read_bytes() == before
    md = (tmp_path / changelog.MARKDOWN).read_text()
    assert "| 2.10 | 2.11 | 1 | 0 | 0 | 0 |" in md


def test_a_changelog_row_names_the_transition_and_the_verdict_columns():
    assert release.CHANGELOG_COLUMNS[:2] == ["from_version", "to_version"]
    assert set(release.CHANGELOG_COLUMNS) - {"from_version", "to_version"} <= set(compare.COMPARE_COLUMNS)
    assert set(compare.CONFIG) <= set(release.CHANGELOG_COLUMNS) and "mde" in release.CHANGELOG_COLUMNS
    assert report.CONFIG == compare.CONFIG


def test_a_build_change_between_releases_is_named():
    a = dict(torch_build_compiler="GCC 11.2", torch_build_onednn="Intel(R) MKL-DNN v3.7.1 (Git Hash 8d26)")
    b = dict(torch_build_compiler="GCC 11.2", torch_build_onednn="Intel(R) MKL-DNN v3.10.2 (Git Hash f1d4)")
    assert changelog.build_change(a, b) == "onednn: Intel(R) MKL-DNN v3.7.1 -> Intel(R) MKL-DNN v3.10.2"
    assert changelog.build_change(a, a) == "" and changelog.build_change({}, b) == ""  # unrecorded: not a change


def transitions(*releases: str, verdict: str = "equivalent", **axes) -> pd.DataFrame:
    """changelog.csv rows of one config over a chain of releases."""
    config = dict(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", precision="fp32",
                  **report.AXIS_DEFAULTS, lr_scale=1.0, steps=60, model_size="tiny") | axes
    return pd.DataFrame([dict(from_version=a, to_version=b, **config, run_id="gpt-cfg-s0", verdict=verdict,
                              base_status="converged", candidate_status="converged")
                         for a, b in zip(releases, releases[1:])], columns=release.CHANGELOG_COLUMNS)


def test_a_run_over_fewer_releases_extends_the_committed_changelog_never_shrinks_it():
    committed = transitions("2.0.1", "2.5.1", "2.8.0", "2.15.0")
    finer = transitions("2.5.1", "2.6.0", "2.7.1", "2.8.0", verdict="identical")
    merged = changelog.extend(committed, finer)
    # 2.5.1 -> 2.8.0 is replaced by the three transitions that cover it; the rest stands, in release order
    assert changelog.transitions_of(merged) == [("2.0.1", "2.5.1"), ("2.5.1", "2.6.0"), ("2.6.0", "2.7.1"),
                                                ("2.7.1", "2.8.0"), ("2.8.0", "2.15.0")]
    assert changelog.releases_of(merged) == ["2.0.1", "2.5.1", "2.6.0", "2.7.1", "2.8.0", "2.15.0"]
    assert changelog.spans(merged) == []
    # an interrupted run (one transition so far) adds it and keeps the span it lies in, said as such
    partial = changelog.extend(committed, transitions("2.8.0", "2.9.1"))
    assert set(changelog.releases_of(committed)) < set(changelog.releases_of(partial))
    assert ("2.8.0", "2.15.0") in changelog.transitions_of(partial)
    assert changelog.spans(partial) == ["2.8.0 -> 2.15.0 spans 2.9.1"]
    # a rerun of a committed transition replaces it (the newer verdict), and 2.10 sorts after 2.9
    rerun = changelog.extend(merged, transitions("2.0.1", "2.5.1", verdict="changed"))
    assert rerun.loc[0, "verdict"] == "changed" and len(rerun) == len(merged)
    assert changelog.release_key("2.10.0") > changelog.release_key("2.9.1") > changelog.release_key("2.9.0+cpu")
    # explain.csv's rows are keyed by "a -> b" and extended by the same rule
    explained = pd.DataFrame(dict(transition=["2.5.1 -> 2.8.0", "2.8.0 -> 2.15.0"], op=["aten::mm", "aten::bmm"]))
    new = pd.DataFrame(dict(transition=["2.5.1 -> 2.6.0", "2.6.0 -> 2.8.0"], op=["aten::addmm", "aten::mm"]))
    assert changelog.extend(explained, new)["transition"].tolist() == ["2.5.1 -> 2.6.0", "2.6.0 -> 2.8.0",
                                                                       "2.8.0 -> 2.15.0"]
    # a changelog written before the batch axes existed reads as full batches of the model's length
    assert changelog.extend(committed, finer.assign(layout="left", context=100))["layout"].tolist()[0] == "full"


def test_each_layout_lists_the_transitions_that_changed_its_bits_or_status_with_the_nan_origin(tmp_path):
    left = transitions("2.4.1", "2.5.1", verdict="status_changed", layout="left", context=100).assign(
        run_id="gpt-left-s0", base_status="diverged_nonfinite", candidate_status="converged")
    right = transitions("2.4.1", "2.5.1", "2.6.0", verdict="identical", layout="right", context=100)
    full = transitions("2.4.1", "2.5.1", verdict="equivalent", layout="full", context=0)  # not the layout part
    table = pd.concat([left, right, full], ignore_index=True)
    for version, reason in (("2.4.1", "non-finite loss (nan) at step 1; first NaN at step 1: aten::_softmax (forward, "
                                      "blocks.0.attn)"), ("2.5.1", "learned: closed 61% of the gap to the floor 1.7")):
        (tmp_path / f"torch-{version}").mkdir()
        report.write_atomic(tmp_path / f"torch-{version}" / report.RUNS,
                            pd.DataFrame(dict(run_id=["gpt-left-s0"], status_reason=[reason])))
    rows = changelog.by_layout(table, reasons=changelog.status_reasons(tmp_path, table))
    assert rows["layout"].tolist() == ["left"]  # right kept its bits; full at the model's length is the recipe grid
    assert "diverged_nonfinite -> converged" in rows.loc[0, "status_changed"]
    # the diverged side's reason (the older release's here), word for word
    assert "(non-finite loss (nan) at step 1; first NaN at step 1: aten::_softmax (forward, blocks.0.attn))" in \
        rows.loc[0, "status_changed"]
    assert "learned" not in rows.loc[0, "status_changed"]
    md = changelog.markdown(table, reasons=changelog.status_reasons(tmp_path, table))
    assert "### By batch layout" in md and "| left | 2.4.1 | 2.5.1 | 1 | 1 |" in md
    assert "3 releases, 2 transitions" in md
    assert "bisected" not in md  # no bisect.csv in the folder
    bisected = pd.DataFrame([dict(run_id=r, layout=lay, context=ctx, last_same=same, first_changed=first, verdict=v,
                                  detail="", why=why) for r, lay, ctx, same, first, v, why in (
        ("gpt-left-s0", "left", 100, "2.4.1", "2.5.1", "status_changed", "changed kernels: aten::_softmax"),
        ("gpt-right-s0", "right", 100, "2.6.0", "", "equivalent", ""),
        ("gpt-s0", "full", 0, "2.4.1", "2.5.1", "changed", "changed kernels: aten::mm"))])
    bisected.to_csv(tmp_path / "bisect.csv", index=False)
    md = changelog.markdown(table, bisected=changelog.read_bisect(tmp_path))
    assert "bisected against the first release (2.4.1 … 2.6.0;" in md and "1 of 2 changed beyond noise or in status" in md
    assert "| gpt-left-s0 | 2.4.1 | 2.5.1 | status_changed |  | changed kernels: aten::_softmax |" in md
    assert "gpt-s0 |" not in md.split("bisected against")[1]  # full batches at the model's length: not the part


def test_changelog_refuses_an_out_folder_whose_changelog_it_cannot_extend(tmp_path, capsys):
    from diagnostics.cli import main

    (tmp_path / "changelog.csv").write_text("not,a\nchangelog\x00")
    before = (tmp_path / "changelog.csv").read_bytes()
    assert main(["changelog", "2.10.0", "2.11.0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a changelog this command can extend" in err[0]
    assert (tmp_path / "changelog.csv").read_bytes() == before  # nothing written


# The latest patch of each minor release since 2.0: the releases the committed changelog covers,
# every one (a run over fewer releases extends it, never shrinks it).
MINOR_RELEASES = ["2.0.1", "2.1.2", "2.2.2", "2.3.1", "2.4.1", "2.5.1", "2.6.0", "2.7.1", "2.8.0", "2.9.1",
                  "2.10.0", "2.11.0", "2.12.1", "2.13.0", "2.14.1", "2.15.0"]


def test_the_committed_changelog_covers_every_release_from_2_0_to_the_newest():
    committed = changelog.read(Path(__file__).resolve().parent.parent / "reports" / "releases")
    releases = changelog.releases_of(committed)
    assert releases[0].startswith("2.0.") and releases[-1] == MINOR_RELEASES[-1]
    assert set(MINOR_RELEASES) <= set(releases)
    # no gap: every pair of neighbouring releases lies within one judged transition (a span kept from
    # an earlier run covers the releases a later run judged inside it)
    key = changelog.release_key
    pairs = set(changelog.transitions_of(committed))
    assert all(any(key(x) <= key(a) and key(b) <= key(y) for x, y in pairs) for a, b in zip(releases, releases[1:]))


def test_a_transition_s_environments_stay_until_its_reproducers_ran(monkeypatch):
    """The base release's environment is the one a transition's reproducers run in: it must not
    be removed to make room for the release after next while that transition is explained."""
    events = []

    class Envs:
        def prepare(self, v):
            events.append(("prepare", str(v)))

        def release(self, v):
            events.append(("release", str(v)))

    class Sessions:
        envs = Envs()

        def finished(self, v):
            return False

        def run(self, v):
            return Path(str(v))

    def explained_here(a, b, transition, sessions, versions):
        events.append(("explain", transition))
        return pd.DataFrame()

    monkeypatch.setattr(questions, "judged", lambda *a, **k: pd.DataFrame(columns=release.CHANGELOG_COLUMNS[2:]))
    monkeypatch.setattr(questions, "explained", explained_here)
    release.changelog(["2.5.1", "2.6.0", "2.7.1", "2.8.0"], Sessions(), explanations=[])
    for a, b in (("2.5.1", "2.6.0"), ("2.6.0", "2.7.1"), ("2.7.1", "2.8.0")):
        explained_at = events.index(("explain", f"{a} -> {b}"))
        for v in (a, b):  # neither side released before its transition's reproducers ran
            assert ("release", v) not in events[:explained_at]
    assert {e for e in events if e[0] == "release"} == {("release", v) for v in ("2.5.1", "2.6.0", "2.7.1", "2.8.0")}


def test_a_cited_cause_is_shown_where_its_op_changed_or_made_the_nan_and_nowhere_else(tmp_path):
    citations = pd.DataFrame([
        dict(transition="2.4.1 -> 2.5.1", op="aten::_softmax", source="https://example.org/pr/1", says="rows of NaN"),
        dict(transition="2.5.1 -> 2.6.0", op="aten::_softmax", source="https://example.org/pr/2", says="elsewhere")])
    text = "x: diverged_nonfinite -> converged (first NaN at step 1: aten::_softmax (forward, blocks.0.attn))"
    assert changelog.cited(citations, "2.4.1 -> 2.5.1", text) == "aten::_softmax: https://example.org/pr/1 (rows of NaN)"
    assert changelog.cited(citations, "2.4.1 -> 2.5.1", "aten::_softmax_backward_data (backward)") == ""  # another op
    assert changelog.cited(citations, "2.6.0 -> 2.7.1", text) == "" and changelog.cited(None, "2.4.1 -> 2.5.1", text) == ""
    citations.to_csv(tmp_path / "citations.csv", index=False)
    assert changelog.read_citations(tmp_path).equals(citations)
    (tmp_path / "citations.csv").write_text("transition,op\n2.4.1 -> 2.5.1,aten::mm\n")
    with pytest.raises(report.ReportError, match="source"):
        changelog.read_citations(tmp_path)


def test_the_committed_citations_each_name_an_op_their_transition_changed_or_failed_in():
    """Every committed citation is shown: its transition is in the changelog and its op is among
    what that transition's explain rows or its diverged runs' NaN origins name."""
    out = Path(__file__).resolve().parent.parent / "reports" / "releases"
    citations = changelog.read_citations(out)
    assert citations is not None and len(citations)
    md = (out / changelog.MARKDOWN).read_text()
    for r in citations.to_dict("records"):
        assert r["source"].startswith("https://github.com/pytorch/pytorch/") and f"{r['op']}: {r['source']}" in md


def test_each_config_s_first_change_comes_from_its_chain_of_transitions_a_change_back_counted():
    a = pd.concat([transitions("2.0.1", "2.1.2", verdict="identical"),
                   transitions("2.1.2", "2.2.2", verdict="equivalent"),
                   transitions("2.2.2", "2.3.1", verdict="status_changed").assign(base_status="converged",
                                                                                 candidate_status="diverged_nonfinite"),
                   transitions("2.3.1", "2.4.1", verdict="status_changed").assign(base_status="diverged_nonfinite"),
                   transitions("2.0.1", "2.4.1", verdict="identical")],  # a span over judged releases: left out
                  ignore_index=True)
    b = pd.concat([transitions("2.0.1", "2.1.2", verdict="status_changed"),  # before the gap: not in its chain
                   transitions("2.1.2", "2.2.2", verdict="skipped"),  # one side did not run it: the gap
                   transitions("2.2.2", "2.3.1", "2.4.1", verdict="identical", layout="left")],
                  ignore_index=True).assign(run_id="gpt-left-s0")
    first = changelog.first_changes(pd.concat([a, b], ignore_index=True)).set_index("run_id")
    assert first.loc["gpt-cfg-s0", ["judged_from", "judged_to", "first_bits_change", "bits_verdict"]].tolist() == \
        ["2.0.1", "2.4.1", "2.1.2 -> 2.2.2", "equivalent"]
    assert first.loc["gpt-cfg-s0", ["first_status_change", "status_change", "status_changes"]].tolist() == \
        ["2.2.2 -> 2.3.1", "converged -> diverged_nonfinite", 2]
    assert first.loc["gpt-left-s0", ["judged_from", "first_bits_change", "first_status_change", "status_changes"]].tolist() \
        == ["2.2.2", "", "", 0]
