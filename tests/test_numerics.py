"""The numerics trace and ``explain``: a control finds nothing, an op changed under a stand-in
environment is named alone, and the alignment's findings on hand-made traces."""

import math

import pandas as pd
import pytest

from diagnostics.grid.spec import RunSpec
from diagnostics.release import explain, numerics
from tests.conftest import cli

GRID = ["--grid", "smoke", "--steps", "6", "--devices", "cpu"]

# stand-in environments: this Python with one aten kernel replaced (torch.library) before the
# command runs; each computes its op another way and moves the result by an ulp
PATCHES = {
    "addmm": """
import torch
lib = torch.library.Library("aten", "IMPL")
def addmm(bias, a, b, *, beta=1, alpha=1):
    out = torch.mm(a, b) * alpha + bias * beta
    return torch.nextafter(out, torch.full_like(out, float("inf")))
lib.impl("addmm", addmm, "CPU")
""",
    "lerp_": """
import torch
lib = torch.library.Library("aten", "IMPL")
def lerp_(self, end, weight):
    moved = self + (end - self) * weight
    return self.copy_(torch.nextafter(moved, torch.full_like(moved, float("inf"))))
lib.impl("lerp_.Scalar", lerp_, "CPU")
""",
    # the running statistics updated another way: native_batch_norm writes them, and its schema does
    # not say so (the output it returns is unchanged: only the state moved)
    "running_stats": """
import torch
lib = torch.library.Library("aten", "IMPL")
def native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    out = torch.ops.aten._native_batch_norm_legit(x, weight, bias, running_mean, running_var, training, momentum, eps)
    if training and running_mean is not None:
        running_mean.copy_(torch.nextafter(running_mean, torch.full_like(running_mean, float("inf"))))
    return out
lib.impl("native_batch_norm", native_batch_norm, "CPU")
""",
    # a cast added before a kernel: the MLP's GELU computed in bfloat16
    "cast": """
import torch
import torch.nn.functional as F
gelu = F.gelu
F.gelu = lambda x, approximate="none": gelu(x.to(torch.bfloat16), approximate=approximate).to(x.dtype)
""",
}


def trace_in(out, *grid, patch=""):
    """``diagnostics trace`` in a stand-in environment: this process with ``PATCHES[patch]``
    applied for the command's length (run as a script's code, so its frames read ``<string>``),
    then taken back: its kernel registrations destroyed, ``F.gelu`` restored."""
    import torch
    import torch.nn.functional as F

    gelu, scope = F.gelu, {}
    exec(compile(PATCHES.get(patch, ""), "<string>", "exec"), scope)
    try:
        proc = cli("trace", *GRID, *grid, "--out", str(out), "--data-dir", str(out.parent / "data"))
    finally:
        for lib in [v for v in scope.values() if isinstance(v, torch.library.Library)]:
            lib._destroy()
        F.gelu = gelu
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return trace_in(tmp_path_factory.mktemp("ref") / "s", "--models", "resnet", "--optimizers", "adamw")


@pytest.mark.slow
def test_a_control_finds_no_op_changed(reference, tmp_path):
    again = trace_in(tmp_path / "again", "--models", "resnet", "--optimizers", "adamw")
    table = explain.explain(reference, again)
    assert table.empty and explain.summary(table) == "no family differs"
    phases = set(numerics.read(reference / numerics.TRACE)["phase"])
    assert phases >= {"init", "data", "forward", "loss", "backward", "optimizer", "schedule"}


@pytest.mark.slow
@pytest.mark.parametrize("patch, op, phase, where", [("addmm", "aten::addmm", "forward", " in net.fc"),
                                                     ("lerp_", "aten::lerp_.Scalar", "optimizer", "")])
def test_an_op_changed_in_a_stand_in_environment_is_named_alone(reference, tmp_path, patch, op, phase, where):
    changed = trace_in(tmp_path / patch, "--models", "resnet", "--optimizers", "adamw", patch=patch)
    table = explain.explain(reference, changed)
    roots = table[table["finding"].isin(explain.ROOTS)]
    assert list(zip(roots["op"], roots["finding"], roots["phase"])) == [(op, explain.CHANGED_KERNEL, phase)]
    assert roots["first_step"].tolist() == [1]
    assert set(table.loc[~table["finding"].isin(explain.ROOTS), "finding"]) <= {explain.DOWNSTREAM}
    step_name = explain.PHASE_WORDS.get(phase, phase)
    # the module it ran in (the optimizer step runs in none), as the trace recorded it
    assert explain.summary(table).startswith(f"changed kernels: {op} ({step_name}{where})")


@pytest.mark.slow
def test_state_written_behind_the_schema_s_back_is_seen(tmp_path):
    ref = trace_in(tmp_path / "ref", "--models", "resnet", "--optimizers", "sgd", "--steps", "2")
    changed = trace_in(tmp_path / "stats", "--models", "resnet", "--optimizers", "sgd", "--steps", "2",
                       patch="running_stats")
    table = explain.explain(ref, changed)
    roots = table[table["finding"].isin(explain.ROOTS)]
    assert set(zip(roots["op"], roots["finding"], roots["phase"])) == {
        ("aten::native_batch_norm", explain.CHANGED_KERNEL, "forward")}
    assert roots["first_step"].min() == 1 and roots["module"].tolist() == ["net.stem.1"]  # the first BatchNorm
    rows = numerics.read(changed / numerics.TRACE)
    assert rows.loc[rows["op"] == "aten::native_batch_norm", "detail"].str.contains("schema does not mark").all()


@pytest.mark.slow
def test_a_cast_before_a_kernel_is_recorded_and_named(tmp_path):
    ref = trace_in(tmp_path / "ref", "--models", "gpt", "--optimizers", "sgd", "--steps", "2")
    changed = trace_in(tmp_path / "cast", "--models", "gpt", "--optimizers", "sgd", "--steps", "2", patch="cast")
    table = explain.explain(ref, changed)
    roots = table[table["finding"].isin(explain.ROOTS)]
    first = roots[roots["first_step"] == 1].iloc[0]
    assert first["phase"] == "forward" and first["finding"] == explain.CHANGED_DECOMPOSITION
    assert "+aten::_to_copy" in first["detail"] and first["module"] == "blocks.0.mlp"
    assert "<string>" in first["frames"] and "diagnostics/grid/models.py" in first["frames"]  # the patch, called by the model


def test_ops_only_removed_are_named_alone():
    update = [row("aten::add_.Tensor", inputs=f"p{i}", output=f"w{i}", signature="u") for i in range(4)]
    a = trace(*update[:2], row("aten::mul_.Tensor", inputs="p", output="q", signature="m"), *update[2:])
    t = explain.explain_traces(a, trace(*update))
    assert t[["op", "finding", "detail"]].values.tolist() == [
        ["aten::mul_.Tensor", explain.CHANGED_DECOMPOSITION, "-aten::mul_.Tensor"]]
    t = explain.explain_traces(trace(*update), a)  # and only added
    assert t[["op", "finding", "detail"]].values.tolist() == [
        ["aten::mul_.Tensor", explain.CHANGED_DECOMPOSITION, "+aten::mul_.Tensor"]]


def test_the_why_line_tells_no_difference_roots_and_differences_without_a_root():
    assert explain.summary(explain.explain_traces(trace(row("aten::mm")), trace(row("aten::mm")))) == "no family differs"
    downstream_only = explain.explain_traces(trace(row("aten::mm", inputs="x", output="y")),
                                             trace(row("aten::mm", inputs="x2", output="y2")))
    assert explain.summary(downstream_only).startswith("1 families differ but no traced op changed")
    assert downstream_only.loc[0, "detail"].endswith("from a difference before the traced ops (the inputs or init)")


def row(op, inputs="i", args="a", output="o", phase="forward", step=1, family="f", signature="s"):
    return dict(family=family, step=step, phase=phase, seq=0, op=op, signature=signature, input_hash=inputs,
                args_hash=args, output_hash=output, detail="")


def trace(*rows):
    df = pd.DataFrame(rows, columns=numerics.TRACE_COLUMNS)
    df["seq"] = range(len(df))
    return df


def test_a_fused_kernel_for_a_decomposition_is_a_changed_decomposition_and_what_follows_is_downstream():
    a = trace(row("aten::mm", output="x"), row("aten::mul_.Tensor", inputs="x", output="y"),
              row("aten::add_.Tensor", inputs="y", output="z"), row("aten::relu", inputs="z", output="r"))
    b = trace(row("aten::mm", output="x"), row("aten::lerp_.Scalar", inputs="x", output="y2"),
              row("aten::relu", inputs="y2", output="r2"))
    t = explain.explain_traces(a, b)
    assert t["finding"].tolist() == [explain.CHANGED_DECOMPOSITION, explain.DOWNSTREAM]
    assert t.loc[0, "op"] == "aten::lerp_.Scalar" and t.loc[0, "detail"] == \
        "-aten::mul_.Tensor, aten::add_.Tensor; +aten::lerp_.Scalar"


def test_a_renamed_op_is_judged_by_its_output():
    a = trace(row("aten::_flash", output="x"), row("aten::relu", inputs="x", output="r"))
    changed = explain.explain_traces(a, trace(row("aten::_flash_for_cpu", output="x2"),
                                              row("aten::relu", inputs="x2", output="r2")))
    assert changed[["op", "finding", "detail"]].values.tolist() == [
        ["aten::_flash_for_cpu", explain.CHANGED_KERNEL, "renamed from aten::_flash"],
        ["", explain.DOWNSTREAM, "first: aten::relu; from aten::_flash_for_cpu (forward)"]]
    kept = explain.explain_traces(a, trace(row("aten::_flash_for_cpu", output="x"), row("aten::relu", inputs="x", output="r")))
    assert kept.empty  # a rename that kept the bits explains nothing
    fed_other_bits = explain.explain_traces(a, trace(row("aten::_flash_for_cpu", inputs="j", output="x2"),
                                                     row("aten::relu", inputs="x2", output="r2")))
    assert fed_other_bits["finding"].tolist() == [explain.DOWNSTREAM]
    other_shapes = explain.explain_traces(a, trace(row("aten::_flash_for_cpu", signature="t", output="x")))
    assert other_shapes["finding"].tolist() == [explain.CHANGED_DECOMPOSITION]


def test_equal_inputs_with_other_arguments_are_changed_arguments_and_an_equal_output_is_no_finding():
    a = trace(row("aten::add_.Tensor", args="lr1", output="w1"), row("aten::ones_like", args="x", output="1"))
    b = trace(row("aten::add_.Tensor", args="lr2", output="w2"), row("aten::ones_like", args="y", output="1"))
    t = explain.explain_traces(a, b)
    assert t[["op", "finding"]].values.tolist() == [["aten::add_.Tensor", explain.CHANGED_ARGUMENTS]]


def test_schedules_generated_code_and_untraced_families():
    # exact values: the LR of step 2 moved by one ulp, which 6 significant digits would not show
    sched = dict(row("lr_schedule", phase="schedule", step=0, family="schedule:x"), detail="[0.1, 0.2, 0.3]")
    a = trace(sched, row("compiled.code", phase="compile", step=0, output="c1"), row("aten::mm", family="g"))
    b = trace(dict(sched, output_hash="o2", detail=f"[0.1, {math.nextafter(0.2, 1)!r}, 0.31]"),
              row("compiled.code", phase="compile", step=0, output="c2"),
              row("RuntimeError", phase="error", step=0, family="g"))
    t = explain.explain_traces(a, b).set_index("family")
    assert t.loc["schedule:x", "finding"] == explain.CHANGED_SCHEDULE and t.loc["schedule:x", "first_step"] == 2
    assert t.loc["f", "finding"] == explain.CHANGED_CODE
    assert t.loc["g", "finding"] == explain.NOT_TRACED and "second side" in t.loc["g", "detail"]


def test_a_change_gone_under_one_capability_is_the_dispatch(tmp_path):
    # a ran natively under AVX2 (its trace is the pinned capability's), b under AVX512
    for side, native, pinned in (("a", "p", "p"), ("b", "o2", "p")):
        d = tmp_path / side
        d.mkdir()
        trace(row("aten::_log_softmax", output=native)).to_csv(d / numerics.TRACE, index=False)
        trace(row("aten::_log_softmax", output=pinned)).to_csv(d / explain.pinned_name(explain.PINNED), index=False)
        pd.DataFrame(dict(key=["cpu_capability"], value=["AVX2" if side == "a" else "AVX512"])).to_csv(
            d / "env.csv", index=False)
    t = explain.explain(tmp_path / "a", tmp_path / "b")
    assert t["finding"].tolist() == [explain.CHANGED_DISPATCH]
    assert explain.summary(t).startswith("CPU capability differs (AVX2 vs AVX512): explained under AVX2 too; "
                                         "changed dispatch: aten::_log_softmax")
    (tmp_path / "b" / explain.pinned_name(explain.PINNED)).unlink()  # no common capability: said so
    (tmp_path / "b" / numerics.TRACE).rename(tmp_path / "b" / "x.csv")
    with pytest.raises(explain.ExplainError, match="holds no trace.csv"):
        explain.explain(tmp_path / "a", tmp_path / "b")


def test_a_family_is_its_grid_point_without_schedule_and_seed():
    s = RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", seed=1,
                impl="fused", clip="1", accumulation=4)
    assert numerics.family_of(s) == "gpt-adamw-cpu-fp32-fused-clip1-acc4"
    assert numerics.family_of_row(dict(model="gpt", optimizer="adamw", scheduler="step", warmup="none",
                                       device="cpu", precision="fp32", impl="fused", model_size="tiny",
                                       clip="1.0", accumulation=4.0)) == numerics.family_of(s)


def test_a_trace_that_is_not_one_is_refused_in_one_line(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(numerics.TraceError, match="not a trace"):
        numerics.read(tmp_path / "t.csv")
    proc = cli("explain", tmp_path / "t.csv", tmp_path / "t.csv")
    assert proc.returncode == 2 and "not a trace" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_family_that_fails_to_trace_is_an_error_row_and_the_others_are_traced(monkeypatch, tmp_path):
    """One family's failure (a compiled family's process that raised) costs that family, not the
    release's whole trace: its transitions are still explained."""
    def fail(spec, *a):
        raise numerics.TraceError(f"tracing {numerics.family_of(spec)} failed: AssertionError: boom")

    traced = []
    monkeypatch.setattr(numerics, "trace_compiled", fail)
    monkeypatch.setattr(numerics, "trace_family", lambda spec, *a: traced.append(spec) or [])
    specs = [RunSpec(model="gpt", optimizer="adamw", scheduler="constant", warmup="none", device="cpu", compile=c, steps=4)
             for c in ("none", "aot_eager")]
    table, cost = numerics.trace(specs, tmp_path, None, 1)
    errors = table[table["phase"] == "error"]
    assert list(errors["family"]) == [numerics.family_of(specs[1])] and "boom" in errors["detail"].iloc[0]
    assert [s.compile for s in traced] == ["none"] and len(cost) == 2
