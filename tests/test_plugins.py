"""Your own recipes: what a plugin registers trains, is judged and listed like a built-in recipe;
what it cannot register is one line."""

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import diagnostics
from diagnostics import report
from diagnostics.grid import models, plugins, recipes
from diagnostics.grid.spec import GridOptions, RunSpec, resolve_grid
from diagnostics.run import train
from tests.conftest import ROOT, cli
from tests.conftest import diagnostics as console

EXAMPLE = str(ROOT / "examples" / "my_recipes.py")


@pytest.fixture
def registries():
    """Whatever a test registers is gone afterwards."""
    saved = dict(recipes.OPTIMIZERS), dict(recipes.SCHEDULERS), dict(models.MODELS), dict(plugins._loaded)
    yield
    for live, old in zip((recipes.OPTIMIZERS, recipes.SCHEDULERS, models.MODELS, plugins._loaded), saved):
        live.clear()
        live.update(old)


class TinyLM(nn.Module):
    """Tokens (N, T) to next-token logits (N, T, vocab), with no method of this project."""

    def __init__(self, vocab: int):
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, idx):
        return self.out(torch.tanh(self.emb(idx)))


def test_registered_recipes_train_like_built_in_ones(registries, tmp_path):
    diagnostics.register_optimizer("radam", torch.optim.RAdam, lr=1e-3)
    diagnostics.register_scheduler("poly", lr_scheduler.PolynomialLR, resolve=lambda n, lr: dict(total_iters=n, power=2.0))
    diagnostics.register_model("tinylm", lambda size, data: TinyLM(data.vocab_size), task="lm", batch_size=8)
    specs = resolve_grid(GridOptions(models="tinylm", optimizers="radam", schedulers="poly", warmup="linear",
                                     steps="5", devices=("cpu",))).specs()
    assert [s.id for s in specs] == ["tinylm-radam-poly-linear-cpu-fp32-s0"]
    row = train.run(specs[0], data_dir=tmp_path).row
    assert row["status"] in ("converged", "stalled") and row["val_metric_name"] == "val_token_accuracy"
    assert '"class_name": "RAdam"' in row["recipe"] and '"scheduler": "PolynomialLR"' in row["recipe"]
    assert row["warmup_steps"] == 1 and row["sdpa_backend"] == ""
    assert recipes.OPTIMIZERS["radam"].impls == ("default", "forloop", "foreach", "fused")  # torch's: its own skips


def test_lion_is_registered_through_the_same_api():
    lion = recipes.OPTIMIZERS["lion"]
    assert lion.make is recipes._lion and lion.impls == ("default", "forloop")
    assert lion.defaults == dict(lr=1e-4, weight_decay=1e-2)


@pytest.mark.parametrize("call, why", [
    (lambda: diagnostics.register_optimizer("My-Opt", torch.optim.SGD, lr=0.1), "lower-case letters"),
    (lambda: diagnostics.register_optimizer("adamw", torch.optim.SGD, lr=0.1), "already registered"),
    (lambda: diagnostics.register_optimizer("sgd2", torch.optim.SGD), "positive finite lr"),
    (lambda: diagnostics.register_optimizer("sgd2", torch.optim.SGD, lr=0.1, impls=("fast",)), "impls must"),
    (lambda: diagnostics.register_scheduler("p", lr_scheduler.StepLR, resolve=lambda n, lr: {}, step_size=3), "not both"),
    (lambda: diagnostics.register_model("m", TinyLM, task="audio"), "task must be one of lm, image"),
    (lambda: diagnostics.register_model("m", TinyLM, task="lm", batch_size=0), "batch_size must"),
])
def test_what_cannot_be_registered_is_one_line(registries, call, why):
    with pytest.raises(plugins.PluginError, match=why):
        call()


def test_entry_point_plugins_load_once_and_a_broken_one_is_one_line(registries, monkeypatch):
    loads = []

    class EntryPoint:
        def __init__(self, value, error=None):
            self.name, self.value, self.error = "mine", value, error

        def load(self):
            loads.append(self.value)
            if self.error:
                raise self.error

    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: [EntryPoint("pkg.recipes")])
    plugins.load(None)
    plugins.load(None)
    assert loads == ["pkg.recipes"]
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group: [EntryPoint("pkg.broken", ImportError("no module named torch_extra"))])
    with pytest.raises(plugins.PluginError, match="plugin entry point mine = pkg.broken: ImportError: no module"):
        plugins.load(None)


@pytest.mark.slow
def test_a_plugin_file_on_the_command_line_is_listed_trained_and_judged(registries, tmp_path):
    assert "radam" not in cli("run", "--help").stdout
    helped = cli("run", "--plugins", EXAMPLE, "--help")
    assert helped.returncode == 0 and "mlp" in helped.stdout and "radam" in helped.stdout and "poly" in helped.stdout
    d = tmp_path / "r"
    # in a process of its own: the file is loaded by the command and by each of its xdist workers
    proc = console("run", "--plugins", EXAMPLE, "--models", "mlp,resnet", "--optimizers", "radam", "--schedulers", "poly",
                   "--warmup", "linear", "--steps", "8", "--devices", "cpu", "--report-dir", str(d), "--data-dir",
                   str(tmp_path / "data"), "--allow-no-baseline", "--quiet", "-n", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    runs = report.read(d / report.RUNS)
    assert sorted(runs["model"]) == ["mlp", "resnet"] and set(runs["status"]) <= {"converged", "stalled"}
    assert (runs["val_metric_name"] == "val_accuracy").all()
    same = cli("compare", str(d), str(d), "--plugins", EXAMPLE, "--out", str(tmp_path / "c"))
    assert same.returncode == 0 and "2 identical" in same.stdout
    bad = cli("run", "--plugins", str(tmp_path / "nothere.py"), "--devices", "cpu")
    assert bad.returncode == 2 and bad.stderr.strip() == f"diagnostics: error: --plugins {tmp_path / 'nothere.py'}: no such file"


def test_a_registered_name_is_valid_in_every_option_check(registries):
    with pytest.raises(ValueError, match="unknown models 'mlp'"):
        resolve_grid(GridOptions(models="mlp", devices=("cpu",)))
    plugins.load(EXAMPLE)
    assert resolve_grid(GridOptions(models="mlp", devices=("cpu",))).specs()[0].model == "mlp"
    assert RunSpec(model="mlp", optimizer="radam", scheduler="poly", warmup="none", device="cpu").id \
        == "mlp-radam-poly-none-cpu-fp32-s0"
