"""The cross-release questions: did torch X change convergence (``judged``, against the noise
``noise_for`` finds), at which release did each config's verdict change (``bisect``), and every
transition of a list of releases with its explanation (``changelog``)."""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diagnostics import report
from diagnostics.grid.parallel import DISTRIBUTED
from diagnostics.judge import compare, verdicts
from diagnostics.release import explain, numerics
from diagnostics.release.environments import ROOT, Candidate, ReleaseError
from diagnostics.release.sessions import KeptSessions, Sessions

NOISE_DIR = "noise"  # in --out: the noise measured in the base environment where none is committed


@dataclass(frozen=True)
class Noise:
    """What a cross-release verdict is judged against, and where it came from (said with it)."""

    path: Path | None  # a tolerances.csv (envelope.csv beside it), or None: no noise at all
    source: str  # "committed for the smoke grid (...)", "measured in torch 2.0.1 (...)", "given", "none"


def grid_configs(specs) -> set[tuple]:
    """The config keys (compare.CONFIG) of a grid's specs."""
    out = set()
    for s in specs:
        row = s.to_dict()
        out.add(compare.config_key(row[c] for c in compare.CONFIG))
    return out


def covered(path: Path, configs: set[tuple]) -> int:
    """How many of ``configs`` a tolerances.csv holds a row for (0 when unreadable)."""
    try:
        tol, _ = compare.read_tolerances(path, str(path))
    except (report.ReportError, ValueError):
        return 0
    return len(set(compare.index_by_config(tol)) & configs)


def committed_noise(grid_name: str, specs) -> Noise | None:
    """The noise committed for this grid (``reports/baselines/GRID/tolerances.csv``), where it
    covers any of the grid's configs on their device types (its rows name the device type and
    every axis: a config it lacks is judged without noise)."""
    from diagnostics.judge import baseline, calibrate

    path = baseline.directory(grid_name) / calibrate.TOLERANCES
    if not path.is_file():
        return None
    configs = grid_configs(specs)
    n = covered(path, configs)
    if not n:
        return None
    return Noise(path, f"committed for the {grid_name} grid ({path}: {n} of its {len(configs)} configs)")


def measure_noise(sessions: Sessions, base: Candidate | str, grid_name: str, specs) -> Noise:
    """The grid's noise measured in the base environment: ``diagnostics calibrate`` there (its
    perturbations: rounding-only reruns, and repeats off the CPU), from the sessions' seed
    checkpoint, into ``out/noise`` (reused once written); raises ReleaseError when it fails."""
    from diagnostics.judge import calibrate

    target = Path(sessions.out) / NOISE_DIR
    path = target / calibrate.TOLERANCES
    if not path.is_file():
        sessions.run(base)  # the seed checkpoint exists before calibration trains from it
        args = ["calibrate", *sessions.grid_args, "--baseline", str(target),
                "--work-dir", str(Path(sessions.out) / "noise-sessions"), "--init-dir", str(Path(sessions.out) / "init"),
                "--resume", *(["-n", sessions.workers] if sessions.workers else [])]
        print(f"release: no noise committed for the {grid_name} grid: measuring it in torch {base} ({' '.join(args)})",
              flush=True)
        if sessions.envs.execute(base, args).returncode != 0 or not path.is_file():
            raise ReleaseError(f"measuring the noise in torch {base} failed (see above); give --tolerances, or "
                               "--no-measure-noise to judge without noise")
    n = covered(path, grid_configs(specs))
    return Noise(path, f"measured in torch {base} ({path}: {n} configs)")


def noise_for(sessions: Sessions, base: Candidate | str, grid_name: str, specs, given: str | None,
              measure: bool = True) -> Noise:
    """What ``release``, ``bisect`` and ``changelog`` judge with: ``--tolerances`` where given,
    else the grid's committed noise, else the noise measured in the base environment (or, with
    ``measure`` off, none: then a config whose bits changed is ``unjudged``, never beyond noise)."""
    if given:
        return Noise(Path(given), f"given ({given})")
    found = committed_noise(grid_name, specs)
    if found is not None:
        return found
    if not measure:
        return Noise(None, "none (a config whose bits changed is unjudged)")
    return measure_noise(sessions, base, grid_name, specs)


def read_noise(noise: Noise | None):
    """(tolerances, envelope) of a Noise (None, None without one)."""
    if noise is None or noise.path is None:
        return None, None
    return compare.read_tolerances(noise.path, str(noise.path))


def judged(base_dir: Path, cand_dir: Path, tolerances, margin: float, policy: verdicts.Policy) -> pd.DataFrame:
    """compare.csv of two report directories (the verdicts of ``diagnostics compare``), judged
    with ``tolerances``: a Noise (its tolerances and envelope), a tolerances table, or None."""
    base, cand, steps, _, envelope = compare.load_pair(base_dir, cand_dir)
    if isinstance(tolerances, Noise):
        tolerances, envelope = read_noise(tolerances)
    return compare.compare_reports(base, cand, *steps, tolerances=tolerances, envelope=envelope, margin=margin,
                                   policy=policy)


def changed(verdict: str, equivalent_is_same: bool) -> bool:
    """Whether a config's verdict against the first version says it changed: any verdict but
    the same bits, or, with ``equivalent_is_same``, any but within noise."""
    return verdict not in (verdicts.WITHIN_NOISE if equivalent_is_same else verdicts.BITS_KEPT)


POLICED = ("direction", "seeds_missing", "seeds_new", "init_verdict")  # what Policy.failure reads beside the verdict


def policed(verdict_row: dict) -> dict:
    """The columns of a compare.csv row that Policy.failure reads beside its verdict (a status
    change that is an improvement passes with --allow-improved), "" where absent."""
    return {k: verdict_row.get(k, "") for k in POLICED}


def bisect(versions: list[str], sessions: Sessions | KeptSessions, tolerances=None, margin: float = verdicts.MARGIN,
           equivalent_is_same: bool = True, why_of: Callable[[str, str], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Per config of the grid: the first of ``versions`` (in the given order) whose verdict against
    ``versions[0]`` changed, by binary search between the first and the last (each version is
    trained at most once, for all configs together). A config whose last version is unchanged
    says so; one skipped on a side at the last version (a release that lacks what it needs) is
    reported as skipped, not searched. Assumes a change, once made, stays (a flip back between
    two probes is not seen). The why of a change is ``why_of(last_same, first_changed)``'s
    explain.csv rows (default: the two sessions' traces explained)."""
    why_of = why_of or (lambda same, first: explained(sessions.run(same), sessions.run(first), f"{same} -> {first}"))
    first = sessions.run(versions[0])
    at_version: dict[str, dict] = {}

    def verdict_at(i: int) -> dict:
        if versions[i] not in at_version:
            table = judged(first, sessions.run(versions[i]), tolerances, margin, verdicts.Policy())
            at_version[versions[i]] = {r["run_id"]: r for r in table.to_dict("records")}
        return at_version[versions[i]]

    last = verdict_at(len(versions) - 1)
    why_cache: dict = {}

    def why(same: str, first: str, row: dict) -> str:
        """What the traces of the last same and the first changed release name for this
        config's family (``explain.summary``)."""
        if (same, first) not in why_cache:
            why_cache[same, first] = why_of(same, first)
        table = why_cache[same, first]
        family = numerics.family_of_row(row)
        schedule = numerics.schedule_name(row["optimizer"], row["scheduler"], row["warmup"], row["steps"],
                                          row["lr_scale"])
        own = table[table["family"].isin([family, schedule, ""])]
        return explain.summary(own, bits_changed=row["verdict"] not in verdicts.BITS_KEPT)

    rows = []
    for run_id, end in sorted(last.items()):
        row = {c: end.get(c) for c in compare.CONFIG} | dict(run_id=run_id)
        if end["verdict"] == "skipped":  # a side cannot run it (e.g. the first release lacks the feature): no search
            rows.append(row | dict(first_changed="", last_same="", verdict="skipped", detail=end["detail"], why=""))
            continue
        if not changed(end["verdict"], equivalent_is_same):
            rows.append(row | policed(end) | dict(first_changed="", last_same=versions[-1], verdict=end["verdict"],
                                                  detail="", why=""))
            continue
        lo, hi = 0, len(versions) - 1  # unchanged at lo, changed at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if changed(verdict_at(mid).get(run_id, {}).get("verdict", "missing"), equivalent_is_same):
                hi = mid
            else:
                lo = mid
        at = verdict_at(hi)[run_id]
        absent = at["verdict"] in ("missing", "new")  # a config one side never ran: no ops to name
        rows.append(row | policed(at) | dict(first_changed=versions[hi], last_same=versions[lo], verdict=at["verdict"],
                                             detail=at["detail"],
                                             why="" if absent else why(versions[lo], versions[hi], at)))
    return pd.DataFrame(rows)


def failing(table: pd.DataFrame, policy: verdicts.Policy) -> list[dict]:
    """The rows of a bisect table whose verdict at the last version fails ``policy`` (bisect
    exits 1 on them, as compare does)."""
    return [r for r in table.to_dict("records") if policy.failure(r)]


CHANGELOG_COLUMNS = ["from_version", "to_version", *compare.CONFIG, "run_id", "verdict", "failure", "detail",
                     "base_status", "candidate_status", "n_seeds_judged", "base_final_loss", "candidate_final_loss",
                     "delta_final_loss", "noise_final_loss", "mde", "p_holm", "first_diff_step"]


def explained(a: Path, b: Path, transition: str, sessions: Sessions | None = None,
              versions: tuple | None = None) -> pd.DataFrame:
    """explain.csv's rows of two sessions (``explain.explain``), each changed kernel confirmed by its
    reproducer where ``sessions`` and the two ``versions`` are given (``confirmed_kernels``);
    sessions without traces give one ``not traced`` row that says why."""
    try:
        table = explain.explain(a, b, transition)
    except explain.ExplainError as e:
        return pd.DataFrame([dict(transition=transition, family="", phase="", op="", finding=explain.NOT_TRACED,
                                  first_step=0, count=0, capability="", detail=str(e), module="", frames="", seq=0,
                                  signature="", repro="")], columns=explain.EXPLAIN_COLUMNS)
    if sessions is not None and versions is not None:
        table = confirmed_kernels(table, sessions, *versions)
    return table


REPRO_DIR = "repro"  # in --out: a folder per transition of repro_<op>.py scripts
MAX_REPROS = 12  # per transition: the first calls (op x input signature) in the table's order


# a distributed family's ops ran on its ranks, under the wrapper: one op alone in one process is not
# what ran (a collective needs its process group), so no single-process reproducer is written
NO_RANKS_REPRO = ("not run: the op ran on the ranks of a distributed family (a collective needs its process group); "
                  "its rank-0 trace in both releases is the evidence")
COLLECTIVES = ("c10d::", "fsdp::")
NO_GRAPH_REPRO = ("not run: a compiled graph is not one op (its generated code is compared by the family's "
                  "compiled.code row)")


def read_trace(session: Path) -> pd.DataFrame | None:
    """A session's trace.csv (None where it has none or it cannot be read)."""
    try:
        return numerics.read(Path(session) / numerics.TRACE)
    except numerics.TraceError:
        return None


def repro_place(row: dict, traces: list) -> str:
    """``trace --repro``'s place of an explain row's op in the first release: the how-manieth call
    of that op it is in its step's phase (``FAMILY:STEP:PHASE:OP#K``), counted in the trace whose
    ``seq`` the row carries (the second release's, or the first's for an op only it ran), since
    the two releases may run other ops in between (2.5's masked attention added two); its bare
    ``seq`` where neither trace holds the op there."""
    family, step, phase, op, seq = row["family"], int(row["first_step"]), row["phase"], row["op"], int(row["seq"])
    for trace in (t for t in traces if t is not None):
        here = trace[(trace["family"] == family) & (trace["step"].astype(int) == step) & (trace["phase"] == phase)]
        seqs = here["seq"].astype(int)
        if ((seqs == seq) & (here["op"] == op)).any():
            return f"{family}:{step}:{phase}:{op}#{int(((seqs < seq) & (here['op'] == op)).sum())}"
    return f"{family}:{step}:{phase}:{seq}"


def shown_path(script: Path, out: Path) -> str:
    """A reproducer's path as explain.csv says it: relative to the command's ``--out`` where it is
    inside it (``repro/2.4.1-2.5.1/call6/repro_<op>.py``: the folder travels with the changelog, an
    absolute path names one machine), else as it is."""
    out = (ROOT / out) if not Path(out).is_absolute() else Path(out)
    try:
        return str(Path(script).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(script)


def confirmed_kernels(table: pd.DataFrame, sessions: Sessions, base, cand) -> pd.DataFrame:
    """Each changed kernel of a transition (its first family) reproduced alone
    (``reproducer``): its inputs captured in the first release's environment, the script run in
    both; ``repro`` says ``confirmed``, ``not confirmed`` or ``not run``, the two hashes and the
    script. One reproducer per op and input signature (a masked call of a kernel is not its
    unmasked call), at most ``MAX_REPROS`` a transition; every row of that op and signature gets
    its result. A compiled graph (``compiled.forward``/``backward``) is no single op: ``not run``."""
    from diagnostics.release import reproducer

    table = table.copy()
    pinned = table["capability"].astype(str) == f"{explain.PINNED.upper()} (both)"  # the pinned pair's own rows
    roots = table[(table["finding"] == explain.CHANGED_KERNEL) & ~pinned]
    graphs = roots["op"].astype(str).str.startswith(numerics.COMPILED)  # a graph's boundary: no one op
    table.loc[graphs[graphs].index, "repro"] = NO_GRAPH_REPRO
    roots = roots[~graphs]
    on_ranks = roots["family"].astype(str).str.rsplit("-", n=1).str[-1].isin(DISTRIBUTED) | \
        roots["op"].astype(str).str.startswith(COLLECTIVES)
    table.loc[on_ranks[on_ranks].index, "repro"] = NO_RANKS_REPRO
    roots = roots[~on_ranks]
    if roots.empty:
        return table
    out = Path(sessions.out) / REPRO_DIR / f"{base}-{cand}"
    traces = [read_trace(sessions.report_dir(v)) for v in (cand, base)]  # a row's seq is where the second ran it
    for n, ((op, sig), rows) in enumerate(roots.groupby(["op", "signature"], sort=False)):
        if n == MAX_REPROS:
            break
        first = rows.sort_values(["first_step"], kind="stable").iloc[0]
        where = repro_place(first, traces)
        done = sessions.envs.execute(base, ["trace", *sessions.grid_args, "--out", str(out / f"call{n}"), "--init-dir",
                                            str(Path(sessions.out) / "init"), "--repro", where], capture=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            why = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            result = f"{reproducer.NOT_RUN}: inputs not captured ({why})"
        else:
            script = Path(lines[-1]) if Path(lines[-1]).is_absolute() else ROOT / lines[-1]
            outcome, detail = reproducer.confirm(script, sessions.envs.python(base), sessions.envs.python(cand))
            result = f"{outcome}: {detail}; {shown_path(script, sessions.out)}"
        table.loc[(table["op"] == op) & (table["signature"] == sig), "repro"] = result
    return table


def changelog(versions: list[Candidate], sessions: Sessions, tolerances=None, margin: float = verdicts.MARGIN,
              on_transition=None, explanations: list | None = None) -> pd.DataFrame:
    """Every consecutive pair of ``versions`` judged (one row per transition and config, as
    ``CHANGELOG_COLUMNS``). Each candidate is trained once (a finished session is reused, so an
    interrupted changelog resumes where it stopped); the next candidate's environment is built
    while the current one trains, and each is released for removal once the transitions it
    belongs to are explained (their reproducers run in both environments; ``Environments.keep``
    then bounds the disk). ``on_transition(table)`` sees the table so far
    after each pair (the command writes it as it goes); ``explanations``, a list, gets each
    transition's explain.csv rows (``explained``) appended before it is called."""
    rows = []
    for i, (a, b) in enumerate(zip(versions, versions[1:])):
        if i == 0:
            if not sessions.finished(b):
                sessions.envs.prepare(b)
            sessions.run(a)
        if i + 2 < len(versions) and not sessions.finished(versions[i + 2]):
            sessions.envs.prepare(versions[i + 2])
        table = judged(sessions.run(a), sessions.run(b), tolerances, margin, verdicts.Policy())
        if explanations is not None:
            explanations.append(explained(sessions.run(a), sessions.run(b), f"{a} -> {b}", sessions, (a, b)))
        # only now may a's environment go: the transition's reproducers run in both (b is the next one's base)
        sessions.envs.release(a)
        rows.append(table.assign(from_version=str(a), to_version=str(b))[CHANGELOG_COLUMNS])
        if on_transition is not None:
            on_transition(pd.concat(rows, ignore_index=True))
    if len(versions) > 1:
        sessions.envs.release(versions[-1])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=CHANGELOG_COLUMNS)
