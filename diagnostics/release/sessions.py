"""One session per torch version: the grid trained in that version's environment into
``out/torch-VERSION`` from the same initial weights, then traced; a finished session is reused
(made with the same grid options, every run on that torch), an interrupted one trained again."""


from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from diagnostics import report
from diagnostics.paths import TRACE
from diagnostics.release.environments import Candidate, Environments, ReleaseError, candidate

MADE_WITH = "made-with.txt"  # in a session's report folder: the grid options that trained it
COMPLETE = "session-complete"  # in a session's report folder, written when its grid finished


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
        args = ["run", *self.grid_args, "--report-dir", str(d), "--init-dir", str(Path(self.out) / "init"),
                "--allow-no-baseline", "--quiet", *(["-n", self.workers] if self.workers else []), "--", "-p",
                "no:cacheprovider"]
        print(f"release: torch {cand}: training the grid into {d}", flush=True)
        self.envs.execute(cand, args)  # a failing test is a verdict for compare, not a reason to stop
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
        args = ["trace", *self.grid_args, "--out", str(d), "--init-dir", str(Path(self.out) / "init")]
        print(f"release: torch {cand}: tracing the grid's families into {d / TRACE}", flush=True)
        if self.envs.execute(cand, args).returncode != 0 or not (d / TRACE).exists():
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




@dataclass(frozen=True)
class KeptSessions:
    """Sessions a changelog already made, read and never trained or traced: ``out/torch-VERSION``
    holding that release's runs.csv (reports/releases keeps one per release). ``bisect
    --sessions`` searches them."""

    out: Path

    def report_dir(self, version: Candidate | str) -> Path:
        return Path(self.out) / f"torch-{version}"

    def run(self, version: Candidate | str) -> Path:
        d = self.report_dir(version)
        if not (d / report.RUNS).is_file():
            raise ReleaseError(f"{d} holds no {report.RUNS}: --sessions reads the sessions a changelog kept "
                               f"({Path(self.out)}/torch-VERSION/{report.RUNS}); give only releases it holds")
        return d

    def why(self, same: str, first: str):
        """explain.csv's rows for "SAME -> FIRST" as the changelog in ``out`` wrote them
        (``explain.of_transition``): a kept session has no trace to explain afresh."""
        from diagnostics.release import explain

        return explain.of_transition(Path(self.out), same, first)
