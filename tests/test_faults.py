"""Faults injected into real training runs of the grid's models are detected at the right step,
with the right kind; healthy runs (warm restarts included) are not called diverged."""

import pytest

from diagnostics.detect import EVENT_KINDS
from diagnostics.grid.spec import RunSpec
from diagnostics.run import train
from diagnostics.run.faults import Fault
from diagnostics.run.train import SYNC_EVERY

pytestmark = pytest.mark.slow


def run(data_dir, model="gpt", optimizer="adamw", scheduler="constant", fault=None, steps=200):
    return train.run(RunSpec(model=model, optimizer=optimizer, scheduler=scheduler, warmup="none", device="cpu",
                             steps=steps), data_dir, fault=fault)


def events(result, kind):
    assert {e["kind"] for e in result.events} <= set(EVENT_KINDS)  # only the documented kinds
    return [e for e in result.events if e["kind"] == kind]


@pytest.mark.parametrize("model", ["gpt", "resnet"])
def test_nan_at_step_k(data_dir, model):
    r = run(data_dir, model, fault=Fault("nan", 77))
    assert r.status == "diverged_nonfinite" and r.row["divergence_step"] == 77
    assert [e["step"] for e in events(r, "nonfinite")] == [77]
    assert r.row["steps_run"] - 77 < SYNC_EVERY  # stopped at the next read


def test_gradient_times_100_is_a_grad_spike_at_its_step(data_dir):
    r = run(data_dir, fault=Fault("grad_scale", 120, 100.0))
    spikes = events(r, "grad_spike")
    assert [e["step"] for e in spikes] == [120] and "largest rise in" in spikes[0]["detail"]
    assert not r.status.startswith("diverged")


def test_lr_bomb_spikes_the_next_loss(data_dir):
    r = run(data_dir, "resnet", "sgd", fault=Fault("lr_bomb", 120, 100.0))
    loss_spikes = [e["step"] for e in events(r, "loss_spike") + events(r, "loss_shift")]  # one incident
    assert len(loss_spikes) == 1 and abs(loss_spikes[0] - 121) <= 2
    assert r.steps[119]["lr"] == pytest.approx(100 * r.steps[118]["lr"])  # the bombed LR is what is recorded


def test_slow_blowup_explodes_and_stops_within_20_steps(data_dir):
    r = run(data_dir, fault=Fault("slow_blowup", 100, 1.15))
    assert r.status in ("diverged_exploded", "diverged_nonfinite")
    crossed = next(s["step"] for s in r.steps if s["loss"] > 3 * r.row["initial_loss"])  # the explosion line
    assert 100 < r.row["divergence_step"] <= crossed  # located where the climb started, not where it was confirmed
    assert r.row["steps_run"] - crossed < 20  # 10 points of patience, then the next read stops it
    assert str(int(r.row["divergence_step"])) in r.row["status_reason"]


@pytest.mark.parametrize("model,optimizer", [("gpt", "adamw"), ("resnet", "sgd")])
def test_healthy_warm_restarts_are_not_divergence(data_dir, model, optimizer):
    r = run(data_dir, model, optimizer, "cosine_restarts")
    assert r.status == "converged", r.row["status_reason"]
    assert not events(r, "explosion") and not events(r, "nonfinite")


def test_unknown_fault_is_rejected():
    with pytest.raises(ValueError, match="unknown fault 'boom'"):
        Fault("boom", 1)
