"""Figures and the HTML report page, as users produce them."""

import re
import shutil
import subprocess

import pandas as pd
import pytest
from matplotlib import image

from diagnostics import report
from diagnostics.grid import recipes
from diagnostics.present import plots
from tests.conftest import cli


def test_default_lr_plot_shows_onecycle_and_cosine_on_one_axes(tmp_path):
    out = tmp_path / "lr.png"
    proc = cli("plot", "lr", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and image.imread(out).std() > 0.01  # not blank


def test_plotted_lr_is_what_training_records(smoke_reports):
    d, _ = smoke_reports["0"]
    steps = report.read(d / "steps.csv")
    rid = "gpt-adamw-cosine-linear-cpu-fp32-s0"
    recorded = steps[steps.run_id == rid].sort_values("step")["lr"].tolist()
    plotted = plots.lr_curves(["cosine"], "adamw", ["linear"], 20)[("cosine", "linear")]
    assert plotted == recorded


def test_lr_plot_draws_the_traces_it_is_given(tmp_path, monkeypatch):
    drawn = []
    import matplotlib.axes

    orig = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: drawn.append(list(a[1])) or orig(self, *a, **k))
    plots.plot_lr(["onecycle", "cosine"], "adamw", ["none"], 50, tmp_path / "x.png")
    assert drawn == [recipes.lr_curve("adamw", "onecycle", "none", 50), recipes.lr_curve("adamw", "cosine", "none", 50)]


def test_plot_lr_all_and_bad_names(tmp_path):
    assert cli("plot", "lr", "--all", "--steps", "50", "--out", str(tmp_path / "all.png")).returncode == 0
    proc = cli("plot", "lr", "--schedulers", "poly", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "unknown value 'poly'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_plot_runs_and_compare(smoke_reports, tmp_path):
    d, _ = smoke_reports["0"]
    proc = cli("plot", "runs", str(d), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "runs").glob("*.png"))
    assert "curves-gpt-cpu-fp32-s0-lrx1.png" in names and "curves-resnet-cpu-fp32-s0-lrx1.png" in names
    # a candidate whose gpt-sgd run got much worse: exactly that config is drawn
    cand = tmp_path / "cand"
    shutil.copytree(d, cand, ignore=shutil.ignore_patterns("data"))
    runs = report.read(cand / "runs.csv")
    runs.loc[runs.run_id == "gpt-sgd-cosine-linear-cpu-fp32-s0", ["final_loss", "weights_sha256"]] = [9.0, "other"]
    report.write_atomic(cand / "runs.csv", runs)
    assert [c["run_id"] for _, c in plots.changed_configs(report.read(d / "runs.csv"), runs)] == \
        ["gpt-sgd-cosine-linear-cpu-fp32-s0"]
    proc = cli("plot", "compare", str(d), str(cand), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0 and (tmp_path / "cmp" / "compare.png").is_file()


def test_plot_of_a_folder_without_reports_is_one_line(tmp_path):
    proc = cli("plot", "runs", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "not a report directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_report_page_lists_every_run(smoke_reports, tmp_path):
    src, _ = smoke_reports["0"]
    d = tmp_path / "rep"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("data"))
    proc = cli("report", str(d))
    assert proc.returncode == 0, proc.stderr
    page = (d / "index.html").read_text()
    runs = report.read(d / "runs.csv")
    assert len(re.findall(r'<tr class="run">', page)) == len(runs) == 4
    for rid in runs.run_id:
        assert rid in page
    for img in re.findall(r'<img src="([^"]+)"', page):
        assert (d / img).is_file()
    assert 'href="runs.csv"' in page and 'href="env.csv"' in page
    assert "Verdicts against the baseline" not in page
    compared = pd.DataFrame(dict(run_id=list(runs.run_id), verdict="equivalent", failure="", n_seeds_judged=1,
                                 mde=[0.2, 0.01, 0.01, 0.01], seeds_missing="", detail="within noise"))
    compared.to_csv(d / "compare.csv", index=False)
    assert cli("report", str(d)).returncode == 0
    page = (d / "index.html").read_text()
    assert "4 equivalent" in page and "1 judged config(s) could not see a 5% change" in page


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package: chromium); .ci/run installs it")
def test_report_page_renders_in_headless_chromium(smoke_reports, tmp_path):
    src, _ = smoke_reports["0"]
    d = tmp_path / "rep"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("data"))
    assert cli("report", str(d)).returncode == 0
    url = (d / "index.html").resolve().as_uri()
    profile = tmp_path / "profile"
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,1000", url], capture_output=True, timeout=120)
    pixels = image.imread(shot)
    assert pixels.std() > 0.02  # not a blank page
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('<tr class="run">') == len(pd.read_csv(d / "runs.csv")) == 4


def test_the_page_summary_names_each_failing_config_with_its_reason_first(tmp_path):
    """Built from rows alone (no training): a regressed run and a diverged one lead the page,
    worst first, each with its reason and the mde of its config; a clean run is not listed."""
    from diagnostics.present import page

    runs = pd.DataFrame([
        dict(run_id="gpt-adamw-cosine-linear-cpu-fp32-s0", status="converged", baseline_check="identical",
             status_reason="closed 70% of the gap"),
        dict(run_id="gpt-sgd-cosine-linear-cpu-fp32-s0", status="converged", baseline_check="regressed",
             status_reason="closed 40% of the gap"),
        dict(run_id="resnet-lion-step-none-cpu-fp32-s0", status="diverged_exploded", baseline_check="status_changed",
             status_reason="loss above 6.9 (3x its initial level) for 10 points, from step 41"),
    ])
    mde = {"gpt-sgd-cosine-linear-cpu-fp32-s0": 0.012}
    need = page.attention(runs, mde)
    assert list(need["run_id"]) == ["resnet-lion-step-none-cpu-fp32-s0", "gpt-sgd-cosine-linear-cpu-fp32-s0"]
    html_text = "\n".join(page.summary_section(runs, mde))
    assert "Needs attention (2)" in html_text and "from step 41" in html_text and "0.012" in html_text
    assert "gpt-adamw-cosine-linear-cpu-fp32-s0" not in html_text
    assert "1 identical, 1 regressed, 1 status_changed" in html_text
    calm = runs.iloc[:1]
    assert "Nothing needs attention" in "\n".join(page.summary_section(calm, {}))
