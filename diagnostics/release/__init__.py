"""Cross-release questions, one command each: did torch X change convergence (``release BASE
CANDIDATE``), and at which release did each config's verdict change (``bisect V1 ... Vn``).

Each torch version gets its own virtual environment under ``envs_dir`` (built once by pip, then
reused): that torch, the matching torchvision where one installs beside it (else none: the
ResNet-8 and gpt need none; resnet18 and ViT are then skips with the reason), and this package,
editable. Each version trains the same grid (default: the ``release`` preset) in its own
environment, from the same initial weights (``--init-dir``: the first version's seed checkpoint),
into ``out/torch-VERSION``; ``diagnostics compare`` judges them with the verdicts of the suite.

pip here serves the torch wheels on local disk first; a version it lacks comes from the registry
(``PIP_CONFIG_FILE=/dev/null`` for that pip call: several GB and a few minutes per version).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import venv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from diagnostics import paths, report
from diagnostics.errors import DiagnosticsError
from diagnostics.judge import compare, verdicts
from diagnostics.paths import TRACE
from diagnostics.release import explain, numerics

ROOT = paths.CHECKOUT
DEFAULT_ENVS_DIR = paths.RELEASE_ENVS_DIR
READY = ".ready"  # written last: an environment without it is rebuilt; its mtime is the last use
MADE_WITH = "made-with.txt"  # in a session's report folder: the grid options that trained it
COMPLETE = "session-complete"  # in a session's report folder, written when its grid finished
MINIMUM_TORCH = (2, 0)  # what a release since lacks is a stated skip (compat.py); 1.x is another API
# torchvision: pip picks it, the newest whose metadata pins this torch (torchvision wheels name
# their torch exactly); older torchvisions than the first of torch 2.0 pinned no torch at all
TORCHVISION = "torchvision>=0.15"
# an old torch built against NumPy 1's C ABI cannot use NumPy 2 ("Numpy is not available");
# asked of each environment after the install, and answered with the NumPy of that era
NUMPY_CHECK = "import numpy, torch; torch.from_numpy(numpy.zeros(1))"
ERA_NUMPY = "numpy<2"
# what one environment takes on disk (torch's CUDA wheels and their nvidia-* dependencies: 4-7 GB
# measured here); a build needs this much free, else the least recently used are removed
ENV_BYTES = 7 * 1024**3


class ReleaseError(DiagnosticsError):
    """An environment that cannot be built or a session that wrote nothing; one line."""


@dataclass(frozen=True)
class Candidate:
    """A torch to judge: a release number (pip installs it) or wheel files (a nightly or release
    candidate downloaded by CI: the torch wheel, and a torchvision wheel beside it if any)."""

    label: str  # names its environment and report folder: the release, or the wheel's exact version
    wheels: tuple[Path, ...] = ()

    def __str__(self) -> str:
        return self.label

    def is_torch(self, version: str) -> bool:
        """Whether a run's ``torch.__version__`` is this candidate (a release ignores the local
        build tag: 2.14.1 is 2.14.1+cu128; a wheel's version is exact)."""
        return version == self.label or (not self.wheels and version.split("+")[0] == self.label)


def torch_version(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string; raises ReleaseError with one line."""
    try:
        major, minor = (int(x) for x in version.split("+")[0].split(".")[:2])
    except ValueError:
        raise ReleaseError(f"{version!r} is not a torch version (e.g. 2.14.1) nor a wheel file or folder") from None
    if (major, minor) < MINIMUM_TORCH:
        raise ReleaseError(f"torch {version} is older than {'.'.join(map(str, MINIMUM_TORCH))}, the oldest release "
                           "this package runs on")
    return major, minor


def candidate(arg: str) -> Candidate:
    """``2.14.1``, a ``torch-*.whl`` file or a folder holding one; raises ReleaseError."""
    path = Path(arg)
    if not (arg.endswith(".whl") or path.is_dir()):
        torch_version(arg)
        return Candidate(arg)
    if not path.exists():
        raise ReleaseError(f"{arg}: no such wheel file")
    wheels = tuple(sorted(path.glob("*.whl"))) if path.is_dir() else (path,)
    torch_wheels = [w for w in wheels if w.name.split("-")[0] == "torch"]
    if len(torch_wheels) != 1:
        raise ReleaseError(f"{arg}: holds {len(torch_wheels)} torch wheels (torch-VERSION-...whl); one is needed")
    version = torch_wheels[0].name.split("-")[1]  # PEP 427: {distribution}-{version}-...
    torch_version(version)
    keep = [w.resolve() for w in wheels if w.name.split("-")[0] in ("torch", "torchvision")]
    return Candidate(version, tuple(keep))


def check_version(version: str) -> None:
    """A torch release or wheel this package can run on; raises ReleaseError with one line."""
    candidate(version)


def pip(python: Path, args: list[str], registry: bool = False, log=None) -> bool:
    """``python -m pip install ARGS``; ``registry``: bypass the local wheel cap (and keep no
    cache: a torch and its CUDA libraries are gigabytes per release)."""
    env = dict(os.environ, **({"PIP_CONFIG_FILE": os.devnull} if registry else {}))
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           *(["--no-cache-dir"] if registry else []), *args]
    return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode == 0


def pip_anywhere(python: Path, args: list[str], log=None) -> bool:
    """Local wheels first, then the registry."""
    return pip(python, args, log=log) or pip(python, args, registry=True, log=log)


@dataclass
class Environments:
    """One cached virtual environment per torch candidate (module docs), at most ``keep`` of
    them: building one more removes the least recently used (never one in use), as does too
    little free disk. ``prepare`` builds the next one in the background while a session trains."""

    root: Path = DEFAULT_ENVS_DIR
    log: object = None  # a file for pip's output (default: inherited)
    keep: int | None = None  # at most this many environments (None: no limit but the disk's)
    in_use: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    building: dict = field(default_factory=dict)  # label -> Future of a background build

    def command(self, cand: Candidate | str) -> list[str]:
        """The ``diagnostics`` command inside the candidate's environment, built if needed."""
        return [str(self.python(cand)), "-m", "diagnostics"]

    def path(self, cand: Candidate | str) -> Path:
        return Path(self.root) / f"torch-{cand}"

    def prepare(self, cand: Candidate) -> None:
        """Start building ``cand``'s environment in the background (``python`` waits for it)."""
        if str(cand) not in self.building and not (self.path(cand) / READY).exists():
            pool = ThreadPoolExecutor(max_workers=1)
            self.building[str(cand)] = pool.submit(self.python, cand)
            pool.shutdown(wait=False)

    def python(self, cand: Candidate | str) -> Path:
        cand = cand if isinstance(cand, Candidate) else candidate(cand)
        pending = self.building.get(str(cand))
        if pending is not None and threading.current_thread() is threading.main_thread():
            pending.result()  # raises the background build's ReleaseError here
        env = self.path(cand)
        python = env / "bin" / "python"
        with self.lock:
            self.in_use.add(str(cand))
            if (env / READY).exists():
                os.utime(env / READY)
                return python
            self.make_room(str(cand))
        where = f"; pip's output in {self.log.name}" if hasattr(self.log, "name") else ""
        print(f"release: building the torch {cand} environment in {env} (once{where})", flush=True)
        venv.create(env, with_pip=True, clear=True)
        self.install(cand, python)
        installed = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                   text=True).stdout.strip()
        if not cand.is_torch(installed):
            raise ReleaseError(f"the torch {cand} environment holds torch {installed or 'none'}: not built")
        (env / READY).write_text(installed)
        return python

    def install(self, cand: Candidate, python: Path) -> None:
        """torch, the torchvision that pairs with it (where one does), this package (editable),
        and the NumPy of the torch's era where the newest breaks it."""
        torch_req = [str(w) for w in cand.wheels] or [f"torch=={cand}"]
        # the package's dependencies with torch held (a local pip cap would otherwise "satisfy"
        # torch>=2.0 by replacing it with the newest local wheel); a wheel folder brings its own torchvision
        package = ["-e", str(ROOT), *torch_req]
        with_vision = package + ([] if cand.wheels else [TORCHVISION])
        if not pip_anywhere(python, with_vision, self.log):
            print(f"release: no torchvision installs beside torch {cand}: going without (its image models are skips)",
                  flush=True)
            if not pip_anywhere(python, package, self.log):
                raise ReleaseError(f"torch {cand} and this package could not be installed into {python.parent.parent} "
                                   "(neither from local wheels nor the registry)")
        if subprocess.run([str(python), "-c", NUMPY_CHECK], capture_output=True).returncode != 0:
            if not (pip_anywhere(python, [ERA_NUMPY, *package], self.log) and
                    subprocess.run([str(python), "-c", NUMPY_CHECK], capture_output=True).returncode == 0):
                raise ReleaseError(f"torch {cand} cannot use NumPy in {python.parent.parent}, even with {ERA_NUMPY}")

    def release(self, cand: Candidate | str) -> None:
        """The candidate's environment is no longer needed by the command (it may be removed)."""
        with self.lock:
            self.in_use.discard(str(cand))

    def make_room(self, label: str) -> None:
        """Remove the least recently used environments not in use until at most ``keep`` - 1
        remain and ``ENV_BYTES`` are free; raises ReleaseError when that cannot be done."""
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        ready = sorted((e for e in root.glob("torch-*") if (e / READY).exists()), key=lambda e: (e / READY).stat().st_mtime)
        removable = [e for e in ready if e.name.removeprefix("torch-") not in self.in_use]

        def crowded() -> bool:
            return self.keep is not None and len([e for e in ready if e.exists()]) >= self.keep

        while (crowded() or shutil.disk_usage(root).free < ENV_BYTES) and removable:
            gone = removable.pop(0)
            print(f"release: removing the environment {gone} (least recently used; rebuilt on demand)", flush=True)
            shutil.rmtree(gone, ignore_errors=True)
        free = shutil.disk_usage(root).free
        if free < ENV_BYTES:
            raise ReleaseError(f"torch {label}: {free / 1024**3:.1f} GB free in {root}, an environment needs "
                               f"~{ENV_BYTES / 1024**3:.0f} GB (and no unused environment is left to remove)")


@dataclass
class Sessions:
    """The grid trained once per torch candidate into ``out/torch-LABEL`` (cached: a finished
    session is not run again; one an interruption left unfinished is rerun from scratch), every
    candidate from the same initial weights."""

    envs: Environments
    grid_args: list[str]  # diagnostics run's grid options
    out: Path
    workers: str | None = None
    check_versions: bool = True  # every run of torch-V must have run on torch V (stand-ins in tests: off)
    traces: bool = True  # trace each session's families (numerics.py) for explain
    done: dict = field(default_factory=dict)

    def report_dir(self, version: Candidate | str) -> Path:
        return Path(self.out) / f"torch-{version}"

    def finished(self, version: Candidate | str) -> bool:
        d = self.report_dir(version)
        return str(version) in self.done or ((d / COMPLETE).exists() and (d / report.RUNS).exists())

    def run(self, version: Candidate | str) -> Path:
        cand = version if isinstance(version, Candidate) else candidate(version) if self.check_versions else \
            Candidate(str(version))
        d = self.report_dir(cand)
        if self.finished(cand):
            self.done[str(cand)] = self.checked(cand, d)
            self.trace(cand, d)
            return d
        if d.exists():  # an interrupted session: its rows are incomplete
            print(f"release: {d} was not finished (interrupted?): training it again", flush=True)
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        (d / MADE_WITH).write_text(self.made_with())
        cmd = [*self.envs.command(cand), "run", *self.grid_args, "--report-dir", str(d),
               "--init-dir", str(Path(self.out) / "init"), "--allow-no-baseline", "--quiet",
               *(["-n", self.workers] if self.workers else []), "--", "-p", "no:cacheprovider"]
        print(f"release: torch {cand}: training the grid into {d}", flush=True)
        subprocess.run(cmd, cwd=ROOT)  # a failing test is a verdict for compare, not a reason to stop
        if not (d / report.RUNS).exists():
            raise ReleaseError(f"the torch {cand} session wrote no runs.csv (see its output above)")
        (d / COMPLETE).write_text(f"{cand}\n")
        self.done[str(cand)] = self.checked(cand, d)
        self.trace(cand, d)
        return d

    def trace(self, cand: Candidate | str, d: Path) -> None:
        """The session's numerics trace (``diagnostics trace`` in the candidate's environment,
        from the same seed checkpoint), once: ``explain`` reads it. A trace that fails is said
        and left out (the verdicts do not need it; the explanation then says there is none)."""
        if not self.traces or (d / TRACE).exists():
            return
        cmd = [*self.envs.command(cand), "trace", *self.grid_args, "--out", str(d),
               "--init-dir", str(Path(self.out) / "init")]
        print(f"release: torch {cand}: tracing the grid's families into {d / TRACE}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0 or not (d / TRACE).exists():
            print(f"release: torch {cand}: no trace (see above); its transitions are not explained", flush=True)

    def made_with(self) -> str:
        """What makes a cached session reusable: the grid options it was trained with."""
        return " ".join(self.grid_args) + "\n"

    def checked(self, cand: Candidate | str, d: Path) -> Path:
        """``d``, once it was made with this command's grid options and every run in it says it
        ran on torch ``cand``."""
        made = (d / MADE_WITH).read_text() if (d / MADE_WITH).exists() else None
        if made != self.made_with():
            was = f"with `{made.strip()}`" if made is not None else "by an unknown command"
            raise ReleaseError(f"{d} was trained {was}, not `{self.made_with().strip()}`: delete it or choose another --out")
        cand = cand if isinstance(cand, Candidate) else Candidate(str(cand))
        ran = set(report.read(d / report.RUNS)["torch_version"].dropna().astype(str))
        if self.check_versions and any(not cand.is_torch(v) for v in ran):
            raise ReleaseError(f"{d} holds runs of torch {', '.join(sorted(ran))}, not {cand}: delete it to rerun")
        return d


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
        cmd = [*sessions.envs.command(base), "calibrate", *sessions.grid_args, "--baseline", str(target),
               "--work-dir", str(Path(sessions.out) / "noise-sessions"), "--init-dir", str(Path(sessions.out) / "init"),
               "--resume", *(["-n", sessions.workers] if sessions.workers else [])]
        print(f"release: no noise committed for the {grid_name} grid: measuring it in torch {base} ({' '.join(cmd[3:])})",
              flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0 or not path.is_file():
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


def bisect(versions: list[str], sessions: Sessions, tolerances=None, margin: float = verdicts.MARGIN,
           equivalent_is_same: bool = True) -> pd.DataFrame:
    """Per config of the grid: the first of ``versions`` (in the given order) whose verdict against
    ``versions[0]`` changed, by binary search between the first and the last (each version is
    trained at most once, for all configs together). A config whose last version is unchanged
    says so; one skipped on a side at the last version (a release that lacks what it needs) is
    reported as skipped, not searched. Assumes a change, once made, stays (a flip back between
    two probes is not seen)."""
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
            why_cache[same, first] = explained(sessions.run(same), sessions.run(first), f"{same} -> {first}")
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
            rows.append(row | dict(first_changed="", last_same=versions[-1], verdict=end["verdict"], detail="",
                                   why=""))
            continue
        lo, hi = 0, len(versions) - 1  # unchanged at lo, changed at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if changed(verdict_at(mid).get(run_id, {}).get("verdict", "missing"), equivalent_is_same):
                hi = mid
            else:
                lo = mid
        at = verdict_at(hi)[run_id]
        rows.append(row | dict(first_changed=versions[hi], last_same=versions[lo], verdict=at["verdict"],
                               detail=at["detail"], why=why(versions[lo], versions[hi], at)))
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


def confirmed_kernels(table: pd.DataFrame, sessions: Sessions, base, cand) -> pd.DataFrame:
    """Each changed kernel of a transition (its first family) reproduced alone
    (``reproducer``): its inputs captured in the first release's environment, the script run in
    both; ``repro`` says ``confirmed``, ``not confirmed`` or ``not run``, the two hashes and the
    script. One reproducer per op and input signature (a masked call of a kernel is not its
    unmasked call), at most ``MAX_REPROS`` a transition; every row of that op and signature gets
    its result."""
    from diagnostics.release import reproducer

    table = table.copy()
    pinned = table["capability"].astype(str) == f"{explain.PINNED.upper()} (both)"  # the pinned pair's own rows
    roots = table[(table["finding"] == explain.CHANGED_KERNEL) & ~pinned]
    if roots.empty:
        return table
    out = Path(sessions.out) / REPRO_DIR / f"{base}-{cand}"
    for n, ((op, sig), rows) in enumerate(roots.groupby(["op", "signature"], sort=False)):
        if n == MAX_REPROS:
            break
        first = rows.sort_values(["first_step"], kind="stable").iloc[0]
        where = f"{first['family']}:{int(first['first_step'])}:{first['phase']}:{int(first['seq'])}"
        cmd = [*sessions.envs.command(base), "trace", *sessions.grid_args, "--out", str(out / f"call{n}"),
               "--init-dir", str(Path(sessions.out) / "init"), "--repro", where]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            why = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            result = f"{reproducer.NOT_RUN}: inputs not captured ({why})"
        else:
            script = Path(lines[-1]) if Path(lines[-1]).is_absolute() else ROOT / lines[-1]
            outcome, detail = reproducer.confirm(script, sessions.envs.python(base), sessions.envs.python(cand))
            result = f"{outcome}: {detail}; {script}"
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
