"""A changed kernel's reproducer: the op alone on the inputs the trace recorded gives the trace's
own hash, and under a stand-in release whose kernel changed it gives another (confirmed)."""

import os
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from diagnostics.grid.spec import RunSpec
from diagnostics.release import numerics, reproducer

pytestmark = pytest.mark.slow

SPEC = RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", steps=6, layout="left")
# a stand-in release: this Python with addmm moved by an ulp (as test_numerics' stand-ins)
PATCH = """
import runpy, sys, torch
lib = torch.library.Library("aten", "IMPL")
def addmm(bias, a, b, *, beta=1, alpha=1):
    out = torch.mm(a, b) * alpha + bias * beta
    return torch.nextafter(out, torch.full_like(out, float("inf")))
lib.impl("addmm", addmm, "CPU")
runpy.run_path(sys.argv[1], run_name="__main__")
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    return data, pd.DataFrame(numerics.trace_family(SPEC, data, None, steps=1))


def stand_in(tmp_path: Path) -> Path:
    (tmp_path / "patch.py").write_text(PATCH)
    exe = tmp_path / "python-patched"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "patch.py"}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_the_reproducer_gives_the_trace_s_hash_and_confirms_a_changed_kernel(traced, tmp_path):
    data, trace = traced
    row = trace[(trace["op"] == "aten::addmm") & (trace["phase"] == "forward")].iloc[0]
    script = reproducer.capture(SPEC, data, None, int(row["step"]), row["phase"], int(row["seq"]), tmp_path)
    assert script.name == "repro_addmm.py" and script.with_suffix(".pt").exists()
    same, why = reproducer.run(sys.executable, script)
    assert why == "" and same == row["output_hash"]  # the op alone, on its recorded inputs, gives the traced bits
    result, detail = reproducer.confirm(script, sys.executable, stand_in(tmp_path))
    assert result == reproducer.CONFIRMED and detail.startswith(f"{same} vs ")
    assert reproducer.confirm(script, sys.executable, sys.executable)[0] == reproducer.NOT_CONFIRMED
    text = script.read_text()
    assert "torch.ops.aten.addmm.default" in text and "blocks.0.attn" in text  # the op and where it ran


def test_the_masked_attention_kernel_and_an_in_place_optimizer_op_are_reproduced(traced, tmp_path):
    data, trace = traced
    for pattern in ("flash_attention", "lerp_|addcdiv_"):
        row = trace[trace["op"].str.contains(pattern)].iloc[0]
        script = reproducer.capture(SPEC, data, None, int(row["step"]), row["phase"], int(row["seq"]), tmp_path)
        assert reproducer.run(sys.executable, script) == (row["output_hash"], "")


def test_a_place_from_another_release_s_trace_is_the_op_s_call_number_not_its_seq(traced, tmp_path):
    """explain names an op where the second release ran it, the reproducer captures it in the
    first: where the second ran more ops before it (2.5's masked attention added two), its seq
    there is another op here. The place is the op's call number in its step's phase instead."""
    from diagnostics.release import questions

    data, trace = traced
    row = trace[trace["op"].str.contains("flash_attention") & (trace["phase"] == "forward")].iloc[0].to_dict()
    later = trace.copy()
    later["seq"] = later["seq"].astype(int) + (later["seq"].astype(int) >= 1).astype(int) * 2  # two ops added early
    moved = dict(row, first_step=row["step"], seq=int(row["seq"]) + 2)
    assert trace[trace["seq"].astype(int) == moved["seq"]]["op"].iloc[0] != row["op"]  # the seq alone: another op
    where = questions.repro_place(moved, [later.astype(str), trace.astype(str)])
    assert where == f"{row['family']}:{row['step']}:forward:{row['op']}#0"
    _, step, phase, at = where.split(":", 3)
    op, _, k = at.rpartition("#")
    script = reproducer.capture(SPEC, data, None, int(step), phase, int(k), tmp_path, op=op)
    assert script.name == "repro_scaled_dot_product_flash_attention_for_cpu.py"
    assert reproducer.run(sys.executable, script) == (row["output_hash"], "")
    assert questions.repro_place(dict(moved, op="aten::nothing"), [trace.astype(str)]).endswith(f":{moved['seq']}")


def test_a_large_input_becomes_a_seeded_recipe():
    tensors, recipes = [], []
    source = reproducer.literal([torch.zeros(3), torch.zeros(reproducer.FULL_ELEMENTS + 1), 2.5, torch.float32],
                                tensors, recipes)
    assert source == "[T[0], seeded(0), 2.5, torch.float32]" and len(tensors) == 1 and len(recipes) == 1


def test_a_script_that_cannot_run_says_why(tmp_path):
    bad = tmp_path / "repro_bad.py"
    bad.write_text("raise SystemExit('no such op here')\n")
    result, detail = reproducer.confirm(bad, sys.executable, sys.executable)
    assert result == reproducer.NOT_RUN and "no such op here" in detail
    assert os.path.exists(bad)


@pytest.mark.parametrize("where, says", [("nonsense", "is not FAMILY:STEP:PHASE:SEQ"),
                                         ("gpt-adamw-cpu-fp32:1:forward:aten::addmm#x", "is not FAMILY:STEP:PHASE:SEQ"),
                                         ("gpt-adamw-cpu-fp32:1:forward:aten::nope#0", "call #0 of aten::nope"),
                                         ("gpt-nope:1:forward:0", "no family 'gpt-nope'"),
                                         ("gpt-adamw-cpu-fp32:1:forward:99999", "no op recorded at step 1")])
def test_trace_repro_refuses_a_place_it_cannot_find_in_one_line(tmp_path, capsys, where, says):
    from diagnostics.cli import main

    code = main(["trace", "--grid", "smoke", "--models", "gpt", "--optimizers", "adamw", "--devices", "cpu",
                 "--out", str(tmp_path), "--data-dir", str(tmp_path / "data"), "--repro", where])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0]


def test_a_compiled_graph_gets_no_single_op_reproducer():
    """A compiled family's changed forward or backward is a graph boundary, not one op: its
    reproducer is 'not run' and says why (the replay's op at that place is another op)."""
    from diagnostics.release import explain, questions

    row = {c: "" for c in explain.EXPLAIN_COLUMNS} | dict(
        transition="2.9.1 -> 2.10.0", family="gpt-adamw-cpu-fp32-inductor", phase="forward", op="compiled.forward",
        finding=explain.CHANGED_KERNEL, first_step=1, count=1, seq=0)
    table = questions.confirmed_kernels(pd.DataFrame([row]), None, "2.9.1", "2.10.0")
    assert table.loc[0, "repro"] == questions.NO_GRAPH_REPRO and table.loc[0, "repro"].startswith(reproducer.NOT_RUN)


def test_a_reproducer_s_path_is_said_relative_to_the_changelog_s_folder(tmp_path):
    from diagnostics.release import questions

    script = tmp_path / "out" / "repro" / "2.4.1-2.5.1" / "call6" / "repro_mm.py"
    assert questions.shown_path(script, tmp_path / "out") == "repro/2.4.1-2.5.1/call6/repro_mm.py"
    assert questions.shown_path(script, tmp_path / "elsewhere") == str(script)
