"""Where the first non-finite value came from: the op that made it from finite inputs, its phase
and its module, located by replaying the step of a real run."""

import math

import pytest
import torch

from diagnostics.grid import models
from diagnostics.grid.spec import RunSpec
from diagnostics.run import origin, train
from diagnostics.run.faults import Fault

pytestmark = pytest.mark.slow


def find(fn):
    finder = origin.Finder()
    with finder:
        fn()
    return finder.found[:5] if finder.found else None


def test_a_mask_s_minus_inf_is_an_input_and_a_fully_masked_softmax_is_the_origin():
    scores = torch.randn(2, 4)
    mask = torch.tensor([[True, False, True, True], [False, False, False, False]])  # row 1 fully masked
    op, phase, module, kind, detail = find(lambda: scores.masked_fill(~mask, -math.inf).softmax(-1))
    assert op == "aten::_softmax" and kind == "NaN"  # not masked_fill: its -inf was an argument
    assert "inf" in detail.split("; output")[0]  # the -inf is named among the inputs


def test_a_nan_made_and_cleaned_is_not_the_origin_of_what_reached_the_end():
    scores = torch.full((2, 3), -math.inf)  # every row fully masked: softmax makes NaN ...

    def step():
        p = scores.softmax(-1)
        safe = torch.where(torch.isnan(p), torch.zeros_like(p), p)  # ... and a where cleans it (as _safe_softmax)
        big = torch.full((2, 3), 1e30) * torch.full((2, 3), 1e30)  # an overflow: inf from finite
        return (safe + big).sum()

    op, _, _, kind, _ = find(step)
    assert op == "aten::mul.Tensor" and kind == "inf"


def test_finite_ops_have_no_origin():
    assert find(lambda: (torch.randn(3, 3) @ torch.randn(3, 3)).softmax(-1)) is None


def test_an_overflow_to_inf_is_an_origin():
    op, _, _, kind, _ = find(lambda: torch.full((3,), 1e30) * torch.full((3,), 1e30))
    assert op == "aten::mul.Tensor" and kind == "inf"


def spec(steps=12):
    return RunSpec(model="gpt", optimizer="adamw", scheduler="constant", warmup="none", device="cpu", steps=steps)


def test_an_injected_nan_making_op_is_named_with_its_phase_and_module(monkeypatch, data_dir):
    forward = models.MLP.forward

    def sick(self, x):  # from step 3 on, blocks.1's MLP takes a square root of negative numbers
        out = forward(self, x)
        return torch.sqrt(out - 1e3) if self is sick.target and sick.armed() else out

    monkeypatch.setattr(models.MLP, "forward", sick)
    calls = {"n": 0}

    def armed():
        calls["n"] += 1
        return calls["n"] > 2  # one forward of blocks.1 per step: from step 3

    sick.armed = armed
    original_init = models.GPT.__init__

    def init(self, cfg):
        original_init(self, cfg)
        sick.target = self.blocks[1].mlp
        calls["n"] = 0  # a new model (the run, then its replay): count again

    monkeypatch.setattr(models.GPT, "__init__", init)
    r = train.run(spec(), data_dir=data_dir)
    assert r.status == "diverged_nonfinite"
    events = [e for e in r.events if e["kind"] == origin.EVENT]
    assert len(events) == 1 and events[0]["signal"] == "aten::sqrt"
    assert "first NaN at step 3: aten::sqrt (forward, blocks.1.mlp)" in r.row["status_reason"]


def test_an_update_that_blew_up_the_weights_is_found_in_the_step_before(monkeypatch, data_dir):
    # AdamW's 4th update overflows one weight (finite gradients and numbers in, inf out): the loss
    # is first non-finite at step 5, whose replay finds the state already non-finite, so step 4 is
    # the one replayed
    step = torch.optim.AdamW.step

    def overflowing(self, *a, **k):
        out = step(self, *a, **k)
        self.n_steps = getattr(self, "n_steps", 0) + 1
        if self.n_steps == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].mul_(1e30).mul_(1e30)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing)
    r = train.run(spec(), data_dir=data_dir)
    assert r.status == "diverged_nonfinite"
    found = [e for e in r.events if e["kind"] == origin.EVENT][0]
    assert found["step"] == 4 and "first inf at step 4: aten::mul_.Tensor (optimizer)" in found["detail"]


def test_a_nan_given_as_an_argument_is_named_as_such(data_dir):
    r = train.run(spec(), data_dir=data_dir, fault=Fault("nan", step=2))
    found = [e for e in r.events if e["kind"] == origin.EVENT][0]
    assert found["step"] == 2 and "(loss" in found["detail"] and "no op made it" in found["detail"]


def test_a_healthy_run_replays_nothing(monkeypatch, data_dir):
    monkeypatch.setattr(train, "locate", lambda *a, **k: pytest.fail("a healthy run was replayed"))
    r = train.run(spec(steps=4), data_dir=data_dir)
    assert r.status != "diverged_nonfinite" and not [e for e in r.events if e["kind"] == origin.EVENT]


def test_a_compiled_model_is_named_by_forward_hooks_that_leave_its_outputs_alone():
    """From torch 2.10 the ModuleTracker's backward hook asserts inside a compiled graph (every
    aot_eager family's trace failed): a compiled model is tracked with forward hooks, and a
    forward hook that returned a value would replace the module's output."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    x = torch.randn(3, 4, requires_grad=True)
    expected = model(x)
    model.compile(backend="eager")
    seen = []
    with origin.module_tracking(model) as module:
        hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, i: seen.append(module()))
        try:
            out = model(x)
            out.sum().backward()
        finally:
            hook.remove()
    assert torch.equal(out, expected)
    assert x.grad is not None
    assert {"0", "2"} <= set(seen)  # the layers named, from inside the compiled call


def test_an_inf_made_upstream_and_turned_into_a_nan_is_the_origin_not_the_nan():
    """The origin is the first non-finite value's: an overflow to inf, which a later op turns
    into a NaN (inf - inf), is named; the subtraction is downstream."""
    def step():
        big = torch.full((3,), 1e30) * torch.full((3,), 1e30)  # inf from finite: the origin
        return big - big  # NaN from inf

    op, _, _, kind, _ = find(step)
    assert op == "aten::mul.Tensor" and kind == "inf"


def broken_mlp(monkeypatch, breaks):
    """blocks.1's MLP takes a square root of negative numbers on the forward calls ``breaks(n)``
    says (n counts every call since the test began: a kernel's state, not the model's)."""
    forward = models.MLP.forward
    calls = {"n": 0}

    def sick(self, x):
        out = forward(self, x)
        if self is not sick.target:
            return out
        calls["n"] += 1
        return torch.sqrt(out - 1e3) if breaks(calls["n"]) else out

    original_init = models.GPT.__init__

    def init(self, cfg):
        original_init(self, cfg)
        sick.target = self.blocks[1].mlp

    monkeypatch.setattr(models.MLP, "forward", sick)
    monkeypatch.setattr(models.GPT, "__init__", init)


def test_a_kernel_that_broke_while_running_is_named_though_the_replay_is_not_the_run(monkeypatch, data_dir):
    """Broken from its 3rd call on and for good: the replay meets the NaN at its own first step,
    not the run's third; it says so, and names the op that made the NaN, never an argument."""
    broken_mlp(monkeypatch, lambda n: n > 2)
    r = train.run(spec(), data_dir=data_dir)
    assert r.status == "diverged_nonfinite"
    reason = r.row["status_reason"]
    assert "first NaN at step 1: aten::sqrt (forward, blocks.1.mlp)" in reason
    assert "the replay parted from the run at step 1" in reason and "no op made it" not in reason


def test_a_kernel_that_broke_once_is_said_not_reproduced_with_where_the_replay_parted(monkeypatch, data_dir):
    broken_mlp(monkeypatch, lambda n: n == 3)  # the 3rd call only: the replay never meets it
    r = train.run(spec(), data_dir=data_dir)
    assert r.status == "diverged_nonfinite"
    reason = r.row["status_reason"]
    assert "first non-finite value not reproduced by an eager replay" in reason
    assert "the replay parted from the run at step 3 (loss" in reason and "vs nan" in reason


def test_a_replay_that_is_the_run_says_so(monkeypatch, data_dir):
    r = train.run(spec(), data_dir=data_dir, fault=Fault("nan", step=2))
    assert "the replay matched the run bit for bit over steps 1-2" in r.row["status_reason"]
