"""Why two torch releases computed different bits: ``diagnostics explain A B`` aligns their
numerics traces (``numerics``) phase by phase and names the ops where they part.

Within each family, step and phase, the two op sequences are aligned by op name and input
signature (``difflib.SequenceMatcher``: the longest matching blocks, so a region one release
computes with other ops, a decomposition swapped for a fused kernel, leaves the ops around it
matched). Each matched op gets one finding (``FINDINGS``):

- ``changed kernel``: its tensor inputs and its other arguments are bitwise equal and its output
  differs: this op computes differently (the op to name upstream);
- ``changed arguments``: its output differs, its tensor inputs are equal and a non-tensor
  argument differs (an LR, an alpha, a flag: the code calling the op changed, not the op);
- ``downstream``: its output differs and its tensor inputs already did (what an earlier change
  passed on);

(an op whose output kept its bits is no finding);

and each unmatched region is a ``changed decomposition``: ops one side runs and the other does
not (or with other input shapes), named with what replaced what; a region that is the same ops
renamed, with the same input signatures, is judged op by op as matched ops are (``renamed``). A
schedule whose LRs differ is ``changed schedule`` (first step: the first LR that differs), generated code that differs is
``changed generated code``, a family only one side traced is ``not traced``. The *root* findings
(every one but ``downstream``) are what a transition's line names; ops whose bits agree are not
written.

**The machine's part.** The vectorised CPU kernels torch dispatches to depend on the CPU
capability it selected (``env.csv``'s ``cpu_capability``). Where two sessions' capabilities
differ and both hold a trace under one pinned capability (``trace-avx2.csv``: ``diagnostics
trace`` writes it under ``ATEN_CPU_CAPABILITY``), that pair is explained too: an op changed at
the native capabilities but equal when pinned is a ``changed dispatch``, not a changed kernel.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path

import pandas as pd

from diagnostics import paths, report
from diagnostics.errors import DiagnosticsError
from diagnostics.release import numerics
from diagnostics.run import dispatch

EXPLAIN = paths.EXPLAIN
CHANGED_KERNEL, CHANGED_ARGUMENTS, DOWNSTREAM = "changed kernel", "changed arguments", "downstream"
CHANGED_DECOMPOSITION, CHANGED_SCHEDULE, CHANGED_CODE = "changed decomposition", "changed schedule", \
    "changed generated code"
CHANGED_DISPATCH, NOT_TRACED = "changed dispatch", "not traced"
FINDINGS = (CHANGED_KERNEL, CHANGED_ARGUMENTS, CHANGED_DECOMPOSITION, CHANGED_SCHEDULE, CHANGED_CODE,
            CHANGED_DISPATCH, DOWNSTREAM, NOT_TRACED)
ROOTS = tuple(v for v in FINDINGS if v not in (DOWNSTREAM, NOT_TRACED))
EXPLAIN_COLUMNS = ["transition", "family", "phase", "op", "finding", "first_step", "count", "capability", "detail",
                   "module", "frames",  # where the op ran: the module path, torch's frame and the model's
                   "seq", "signature",  # its place in the first trace's step and phase, its input signature
                   "repro"]  # its reproducer's result, the two hashes and the script
PINNED = "avx2"  # the capability every release since 2.0 has kernels for on x86-64 (ATEN_CPU_CAPABILITY)
UNPINNED = "no trace under one capability"  # said where capabilities differ and no pinned pair exists
PINNED_TRACE_ENV = "DIAGNOSTICS_PINNED_TRACE"  # set for the trace that ``diagnostics trace`` takes under PINNED
PHASE_ORDER = {p: i for i, p in enumerate(("init", "compile", *numerics.PHASES))}
PHASE_WORDS = {"optimizer": "optimizer step"}


class ExplainError(DiagnosticsError):
    """Traces that cannot be read or paired; one line."""


def pinned_name(capability: str) -> str:
    return f"trace-{capability.lower()}.csv"


def key(row: dict) -> str:
    return f"{row['op']}|{row['signature']}"


def matched_finding(a: dict, b: dict) -> str | None:
    """The finding of an op both sides ran with the same name and signature (None: its output
    kept its bits, whatever its inputs or arguments: ``ones_like`` given another spelling of its
    defaults computes the same ones)."""
    if a["output_hash"] == b["output_hash"]:
        # an output not hashed (a padded gather buffer, dispatch.PADDED_BUFFERS): its arguments are
        # what can be compared
        return CHANGED_ARGUMENTS if not a["output_hash"] and a["args_hash"] != b["args_hash"] else None
    unhashed = dispatch.PADDED_BUFFERS.get(str(a["op"]).split(".")[0]) in ("input", "both")
    if a["input_hash"] != b["input_hash"] or unhashed:  # inputs not hashed (padding): never shown equal
        return DOWNSTREAM
    return CHANGED_ARGUMENTS if a["args_hash"] != b["args_hash"] else CHANGED_KERNEL


def counted(names: list[str]) -> str:
    return ", ".join(f"{n} x{c}" if c > 1 else n for n, c in Counter(names).items())


def renamed(gone: list[dict], added: list[dict]) -> bool:
    """An unmatched region that is the same ops under other names: as many ops on each side, each
    called with the same input signature as its counterpart (2.3 renamed the CPU flash-attention
    kernel ``_scaled_dot_product_flash_attention_for_cpu``). Its ops are judged as matched ones
    (``matched_finding``): a renamed op fed the same bits that gives other bits is a ``changed
    kernel``, one that kept its bits no finding."""
    return bool(gone) and len(gone) == len(added) and all(x["signature"] == y["signature"] for x, y in zip(gone, added))


def subsequence_opcodes(a: list[str], b: list[str]):
    """Where one sequence is the other with ops only removed (or only added), the opcodes that say
    exactly that: every op of the shorter matched in order, the rest deleted (inserted); None
    where it is not a subsequence. difflib's longest blocks can pair a repeated run of ops (one
    parameter update after another) across the gap and invent a replaced region."""
    short, long_, swap = (b, a, False) if len(b) <= len(a) else (a, b, True)
    pairs, j = [], 0
    for i, k in enumerate(long_):
        if j < len(short) and short[j] == k:
            pairs.append((i, j))
            j += 1
    if j < len(short):
        return None
    ops, i0, j0 = [], 0, 0
    for i, jj in pairs + [(len(long_), len(short))]:
        if i > i0:
            ops.append(("insert", j0, j0, i0, i) if swap else ("delete", i0, i, j0, j0))
        if i < len(long_):
            ops.append(("equal", jj, jj + 1, i, i + 1) if swap else ("equal", i, i + 1, jj, jj + 1))
        i0, j0 = i + 1, jj + 1
    return ops


def located(row: dict) -> dict:
    return dict(module=row.get("module", ""), frames=row.get("frames", ""), seq=int(row.get("seq", 0)),
                signature=row.get("signature", ""))


def align(a: list[dict], b: list[dict]) -> list[dict]:
    """The findings of one phase of one step: a list of (op, finding, detail, module, frames)
    dicts, each located where the second side ran it (the first, for what it alone ran)."""
    out = []
    ka, kb = [key(r) for r in a], [key(r) for r in b]
    opcodes = None
    if len(ka) != len(kb):  # ops only removed or only added: bit-equal ops paired first, then by name
        opcodes = subsequence_opcodes([f"{k}|{r['output_hash']}" for k, r in zip(ka, a)],
                                      [f"{k}|{r['output_hash']}" for k, r in zip(kb, b)]) or subsequence_opcodes(ka, kb)
    if opcodes is None:
        opcodes = difflib.SequenceMatcher(None, ka, kb, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal" or renamed(a[i1:i2], b[j1:j2]):
            for x, y in zip(a[i1:i2], b[j1:j2]):
                finding = matched_finding(x, y)
                if finding is not None:
                    same_name = finding == DOWNSTREAM or x["op"] == y["op"]
                    out.append(dict(op=y["op"], finding=finding, detail="" if same_name else f"renamed from {x['op']}",
                                    **located(y)))
            continue
        gone, added = [r["op"] for r in a[i1:i2]], [r["op"] for r in b[j1:j2]]
        op = (added or gone)[0] if len(set(added or gone)) == 1 else ", ".join(dict.fromkeys(added or gone))
        parts = ([f"-{counted(gone)}"] if gone else []) + ([f"+{counted(added)}"] if added else [])
        out.append(dict(op=op, finding=CHANGED_DECOMPOSITION, detail="; ".join(parts),
                        **located((b[j1:j2] or a[i1:i2])[0])))
    return out


def schedule_step(a: dict, b: dict) -> int:
    """The first step (1-based) whose LR differs between two schedule rows."""
    x, y = json.loads(a["detail"] or "[]"), json.loads(b["detail"] or "[]")
    return next((i + 1 for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)) + 1)


def explain_family(family: str, a: pd.DataFrame, b: pd.DataFrame) -> list[dict]:
    """Every finding of one family (rows of ``EXPLAIN_COLUMNS`` without transition/capability)."""
    if a.empty or b.empty or "error" in set(a["phase"]) or "error" in set(b["phase"]):
        side = "the first" if a.empty or "error" in set(a["phase"]) else "the second"
        err = (a if side == "the first" else b)
        why = "; ".join(err.loc[err["phase"] == "error", "detail"]) if not err.empty else "no rows"
        return [dict(family=family, phase="", op="", finding=NOT_TRACED, first_step=0, count=1,
                     detail=f"{side} side traced nothing ({why})", module="", frames="", seq=0, signature="",
                     repro="")]
    found = []
    for (step, phase), x in a.groupby(["step", "phase"], sort=False):
        y = b[(b["step"] == step) & (b["phase"] == phase)]
        xs, ys = x.sort_values("seq").to_dict("records"), y.sort_values("seq").to_dict("records")
        if phase == "schedule":
            if xs[0]["output_hash"] != (ys[0]["output_hash"] if ys else None):
                found.append(dict(phase=phase, op=xs[0]["op"], finding=CHANGED_SCHEDULE,
                                  step=schedule_step(xs[0], ys[0]) if ys else 0, detail="", module="", frames="", seq=0,
                                  signature=""))
            continue
        if phase == "compile":
            if not ys or xs[0]["output_hash"] != ys[0]["output_hash"]:
                found.append(dict(phase=phase, op=xs[0]["op"], finding=CHANGED_CODE, step=0,
                                  detail=f"{xs[0]['signature']} vs {ys[0]['signature'] if ys else 'none'}",
                                  module="", frames="", seq=0, signature=""))
            continue
        found += [dict(f, phase=phase, step=int(step)) for f in align(xs, ys)]
    for (step, phase), y in b.groupby(["step", "phase"], sort=False):  # phases only the second side ran
        if a[(a["step"] == step) & (a["phase"] == phase)].empty:
            found += [dict(f, phase=phase, step=int(step)) for f in align([], y.sort_values("seq").to_dict("records"))]
    rows = []
    if found:
        df = pd.DataFrame(found)
        downstream = df["finding"] == DOWNSTREAM
        first_op = df[downstream].groupby(["phase"], sort=False)["op"].first()  # each phase's first downstream op
        df.loc[downstream, "op"] = ""  # downstream: one row per phase, not per op
        roots: list[str] = []  # the roots met so far, in the order of the steps and phases
        order = sorted(df.groupby(["phase", "op", "finding"], sort=False),
                       key=lambda kv: (int(kv[1]["step"].min()), PHASE_ORDER.get(kv[0][0], 99), kv[0][2] == DOWNSTREAM))
        for (phase, op, finding), g in order:
            detail = "; ".join(dict.fromkeys(d for d in g["detail"] if d))
            where = g.iloc[0]
            if finding == DOWNSTREAM:
                origin = f"from {roots[0]}" if roots else "from a difference before the traced ops (the inputs or init)"
                detail = f"first: {first_op[phase]}; {origin}"
            elif finding in ROOTS:
                roots.append(f"{op} ({phase}{', ' + where['module'] if where['module'] else ''})")
            first = g[g["step"] == g["step"].min()].iloc[0]
            rows.append(dict(family=family, phase=phase, op=op, finding=finding, first_step=int(first["step"]),
                             count=len(g), detail=detail[:500], module=where["module"], frames=where["frames"],
                             seq=int(first["seq"]), signature=first["signature"], repro=""))
    return rows


def explain_traces(a: pd.DataFrame, b: pd.DataFrame, capability: str = "native") -> pd.DataFrame:
    """Every family of either trace, explained (``EXPLAIN_COLUMNS``, transition left empty)."""
    rows = []
    a, b = (t.assign(**{c: t[c].astype(object).fillna("").astype(str) if c in t else "" for c in numerics.LATER_COLUMNS})
            for t in (a, b))
    fams = list(dict.fromkeys([*a["family"], *b["family"]]))
    for family in fams:
        rows += explain_family(family, a[a["family"] == family], b[b["family"] == family])
    return pd.DataFrame([dict(r, transition="", capability=capability) for r in rows], columns=EXPLAIN_COLUMNS)


def capability_of(session: Path) -> str:
    """A session's ``cpu_capability`` from its env.csv ("" where it did not record one)."""
    path = Path(session) / report.ENV
    if not path.is_file():
        return ""
    env = pd.read_csv(path, dtype=str, keep_default_na=False)
    value = env.loc[env["key"] == "cpu_capability", "value"]
    return value.iloc[0] if len(value) else ""


def traces_of(path: Path) -> dict[str, Path]:
    """A session's traces by capability: its native trace (under its own capability, or
    "native" where unknown) and any pinned one."""
    path = Path(path)
    if path.is_file():
        return {"native": path}
    native = path / numerics.TRACE
    if not native.is_file():
        raise ExplainError(f"{path}: holds no {numerics.TRACE} (diagnostics trace writes it)")
    cap = capability_of(path)
    out = {cap.lower() or "native": native}
    pinned = path / pinned_name(PINNED)
    if pinned.is_file():
        out.setdefault(PINNED, pinned)
    return out


def explain(a: Path, b: Path, transition: str = "") -> pd.DataFrame:
    """explain.csv of two sessions (folders holding trace.csv and env.csv) or two trace files:
    the native traces, and where the capabilities differ and a pinned pair exists, the pinned
    pair too; an op changed natively and not when pinned becomes ``changed dispatch``."""
    ta, tb = traces_of(a), traces_of(b)
    try:
        native_a, native_b = next(iter(ta.values())), next(iter(tb.values()))
        table = explain_traces(numerics.read(native_a), numerics.read(native_b))
        caps = (next(iter(ta)), next(iter(tb)))
        if caps[0] != caps[1] and "native" not in caps:
            common = [c for c in ta if c in tb]
            detail = f"capabilities differ: {caps[0].upper()} vs {caps[1].upper()}"
            table["capability"] = f"{caps[0].upper()} vs {caps[1].upper()}"
            if common:
                pa, pb = numerics.read(ta[common[0]]), numerics.read(tb[common[0]])
                pinned = explain_traces(pa, pb, capability=f"{common[0].upper()} (both)")
                table = with_dispatch(table, pinned, detail, traced_families(pa) & traced_families(pb))
            else:
                table["capability"] = f"{caps[0].upper()} vs {caps[1].upper()} ({UNPINNED})"
    except numerics.TraceError as e:
        raise ExplainError(str(e)) from None
    table["transition"] = transition
    return table


def traced_families(trace: pd.DataFrame) -> set[str]:
    """The families a trace holds steps of (not one that failed)."""
    failed = set(trace.loc[trace["phase"] == "error", "family"])
    return set(trace["family"]) - failed


def with_dispatch(native: pd.DataFrame, pinned: pd.DataFrame, detail: str, traced: set[str]) -> pd.DataFrame:
    """Native findings, relabelled where the pinned pair (which traced the families ``traced``)
    does not find them: a root that is gone under one capability was the dispatch's
    (``changed dispatch``); the pinned pair's own rows follow."""
    keep = {(r["family"], r["phase"], r["op"]) for r in pinned.to_dict("records") if r["finding"] in ROOTS}
    native = native.copy()
    roots = native["finding"].isin((CHANGED_KERNEL, CHANGED_ARGUMENTS, CHANGED_DECOMPOSITION)) & \
        native["family"].isin(traced)
    gone = roots & ~native.apply(lambda r: (r["family"], r["phase"], r["op"]) in keep, axis=1)
    native.loc[gone, "finding"] = CHANGED_DISPATCH
    native.loc[gone, "detail"] = detail + "; equal under one capability"
    return pd.concat([native, pinned], ignore_index=True)


def summary(table: pd.DataFrame, bits_changed: bool | None = None) -> str:
    """A transition's line: "changed kernels: aten::addmm (forward), aten::_foreach_lerp_
    (optimizer step); ..." over its families (an op found at the native capabilities and under
    the pinned one is one op). A transition whose bits changed (``bits_changed``) and whose
    traces name no root says so."""
    parts = []
    caps = table["capability"].astype(str)
    differ = caps[caps.str.contains(" vs ")]
    if len(differ):
        cap = differ.iloc[0]
        parts.append(f"CPU capability differs ({cap})" if UNPINNED in cap else
                     f"CPU capability differs ({cap}): explained under {PINNED.upper()} too")
    for finding, words in ((CHANGED_DISPATCH, "changed dispatch"), (CHANGED_KERNEL, "changed kernels"),
                           (CHANGED_DECOMPOSITION, "changed decompositions"), (CHANGED_ARGUMENTS, "changed arguments"),
                           (CHANGED_SCHEDULE, "changed schedules"), (CHANGED_CODE, "changed generated code")):
        rows = table[table["finding"] == finding]
        if not rows.empty:
            parts.append(f"{words}: {ops_in(rows) if finding != CHANGED_SCHEDULE else schedules_in(rows)}")
    if not table["finding"].isin(ROOTS).any():
        differ = table.loc[table["finding"] == DOWNSTREAM, "family"].nunique()
        if differ:
            parts.append(f"{differ} families differ but no traced op changed (the difference came in before "
                         "the traced ops: their inputs or initial weights)")
        elif bits_changed:
            parts.append("bits changed but no family's trace differs (the change is outside the traced steps)")
        else:
            parts.append("no family differs")
    untraced = table[table["finding"] == NOT_TRACED]
    if len(untraced):
        parts.append(f"not traced: {untraced['family'].replace('', 'every family').nunique()} families")
    return "; ".join(parts)


def ops_in(rows: pd.DataFrame, most: int = 6) -> str:
    """"aten::addmm (forward in blocks.0.mlp, 4 families; repro confirmed), ..." the ops of some
    findings, most families first: each op's phase, the module it ran in most often (where the
    trace recorded one), and its reproducer's result (where one ran)."""
    groups = rows.groupby(["op", "phase"], sort=False)["family"].nunique().sort_values(ascending=False,
                                                                                      kind="stable")
    def confirmed(op: str) -> str:
        said = rows.loc[rows["op"] == op, "repro"].astype(str) if "repro" in rows else pd.Series(dtype=str)
        said = [r.split(":")[0] for r in said if r]
        return f"; repro {said[0]}" if said else ""

    def module(op: str, phase: str) -> str:
        said = rows.loc[(rows["op"] == op) & (rows["phase"] == phase), "module"] if "module" in rows else []
        said = pd.Series(said, dtype=str).replace("nan", "")
        said = said[said != ""]
        return f" in {said.mode().iloc[0]}" if len(said) else ""

    items = [f"{op} ({PHASE_WORDS.get(phase, phase)}{module(op, phase)}{f', {n} families' if n > 1 else ''}"
             f"{confirmed(op)})" for (op, phase), n in groups.items()]
    return ", ".join(items[:most]) + (f", and {len(items) - most} more" if len(items) > most else "")


def schedules_in(rows: pd.DataFrame) -> str:
    return ", ".join(f"{f.removeprefix('schedule:')} (from step {s})" for f, s in zip(rows["family"],
                                                                                      rows["first_step"]))


def write(table: pd.DataFrame, path: Path) -> None:
    report.write_atomic(Path(path), table)


def read(folder: Path) -> pd.DataFrame | None:
    """``folder/explain.csv`` as text (None where absent); a file written before the column was
    named ``finding`` (it was ``verdict``) reads the same."""
    path = Path(folder) / paths.EXPLAIN
    if not path.exists():
        return None
    return pd.read_csv(path, dtype=str, keep_default_na=False).rename(columns={"verdict": "finding"})


def of_transition(folder: Path, same: str, first: str) -> pd.DataFrame:
    """The rows a changelog's ``folder/explain.csv`` holds for the transition "SAME -> FIRST";
    one ``not traced`` row saying why where it holds none (the changelog never judged those two
    releases side by side, or has no explain.csv)."""
    transition = f"{same} -> {first}"
    table = read(folder)
    own = table[table["transition"] == transition] if table is not None else None
    if own is not None and len(own):
        return own.reset_index(drop=True)
    return pd.DataFrame([dict(transition=transition, family="", phase="", op="", finding=NOT_TRACED, first_step=0,
                              count=0, capability="", detail=f"{Path(folder) / paths.EXPLAIN} holds no {transition}",
                              module="", frames="", seq=0, signature="", repro="")], columns=EXPLAIN_COLUMNS)
