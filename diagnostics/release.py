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
import subprocess
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import compare, report

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENVS_DIR = ROOT / ".release-envs"
# torchvision releases seen to import beside these torch releases on this machine; for any other
# torch 2.M.P, torchvision 0.(M+15).P is tried, and the environment goes without on failure
TORCHVISION_FOR = {"2.15.0": "0.29.2", "2.14.1": "0.29.1", "2.9.1": "0.24.1", "2.13.0": None}
READY = ".ready"  # written last: an environment without it is rebuilt
MADE_WITH = "made-with.txt"  # in a session's report folder: the grid options that trained it


class ReleaseError(Exception):
    """An environment that cannot be built or a session that wrote nothing; one line."""


MINIMUM_TORCH = (2, 4)  # pyproject's torch>=2.4 (nn.RMSNorm): older releases cannot run this package


def check_version(version: str) -> None:
    """A torch release this package can run on; raises ReleaseError with one line."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        raise ReleaseError(f"{version!r} is not a torch version (e.g. 2.14.1)") from None
    if (major, minor) < MINIMUM_TORCH:
        raise ReleaseError(f"torch {version} is older than {'.'.join(map(str, MINIMUM_TORCH))}, the oldest release "
                           "this package runs on (nn.RMSNorm)")


def torchvision_for(torch_version: str) -> str | None:
    if torch_version in TORCHVISION_FOR:
        return TORCHVISION_FOR[torch_version]
    try:
        major, minor, patch = (int(x) for x in torch_version.split("+")[0].split(".")[:3])
    except ValueError:
        return None
    return f"0.{minor + 15}.{patch}" if major == 2 else None


def pip(python: Path, args: list[str], registry: bool = False, log=None) -> bool:
    """``python -m pip install ARGS``; ``registry``: bypass the local wheel cap."""
    env = dict(os.environ, **({"PIP_CONFIG_FILE": os.devnull} if registry else {}))
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode == 0


@dataclass
class Environments:
    """One cached virtual environment per torch version (module docs)."""

    root: Path = DEFAULT_ENVS_DIR
    log: object = None  # a file for pip's output (default: inherited)

    def command(self, version: str) -> list[str]:
        """The ``diagnostics`` command inside ``version``'s environment, built if needed."""
        return [str(self.python(version)), "-m", "diagnostics"]

    def python(self, version: str) -> Path:
        env = Path(self.root) / f"torch-{version}"
        python = env / "bin" / "python"
        if (env / READY).exists():
            return python
        where = f"; pip's output in {self.log.name}" if hasattr(self.log, "name") else ""
        print(f"release: building the torch {version} environment in {env} (once{where})", flush=True)
        venv.create(env, with_pip=True, clear=True)
        if not (pip(python, [f"torch=={version}"], log=self.log) or
                pip(python, [f"torch=={version}"], registry=True, log=self.log)):
            raise ReleaseError(f"torch {version} could not be installed (neither from local wheels nor the registry)")
        tv = torchvision_for(version)
        if tv and not (pip(python, [f"torchvision=={tv}", "--no-deps"], log=self.log) or
                       pip(python, [f"torchvision=={tv}", "--no-deps"], registry=True, log=self.log)):
            print(f"release: torchvision {tv} did not install beside torch {version}: going without", flush=True)
        # the package's own dependencies, with torch held at this version: a local pip cap would
        # otherwise "satisfy" torch>=2.4 by replacing it with the newest local wheel
        package = ["-e", str(ROOT), f"torch=={version}"]
        if not (pip(python, package, log=self.log) or pip(python, package, registry=True, log=self.log)):
            raise ReleaseError(f"this package could not be installed into {env} beside torch {version}")
        installed = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                   text=True).stdout.strip()
        if installed.split("+")[0] != version:
            raise ReleaseError(f"the torch {version} environment holds torch {installed or 'none'}: not built")
        (env / READY).write_text(version)
        return python


@dataclass
class Sessions:
    """The grid trained once per torch version into ``out/torch-VERSION`` (cached: a version
    whose report exists is not run again), every version from the same initial weights."""

    envs: Environments
    grid_args: list[str]  # diagnostics run's grid options
    out: Path
    workers: str | None = None
    check_versions: bool = True  # every run of torch-V must have run on torch V (stand-ins in tests: off)
    done: dict = field(default_factory=dict)

    def report_dir(self, version: str) -> Path:
        return Path(self.out) / f"torch-{version}"

    def run(self, version: str) -> Path:
        d = self.report_dir(version)
        if version in self.done or (d / report.RUNS).exists():
            self.done[version] = self.checked(version, d)
            return d
        d.mkdir(parents=True, exist_ok=True)
        (d / MADE_WITH).write_text(self.made_with())
        cmd = [*self.envs.command(version), "run", *self.grid_args, "--report-dir", str(d),
               "--init-dir", str(Path(self.out) / "init"), "--allow-no-baseline", "--quiet",
               *(["-n", self.workers] if self.workers else []), "--", "-p", "no:cacheprovider"]
        print(f"release: torch {version}: training the grid into {d}", flush=True)
        subprocess.run(cmd, cwd=ROOT)  # a failing test is a verdict for compare, not a reason to stop
        if not (d / report.RUNS).exists():
            raise ReleaseError(f"the torch {version} session wrote no runs.csv (see its output above)")
        self.done[version] = self.checked(version, d)
        return d

    def made_with(self) -> str:
        """What makes a cached session reusable: the grid options it was trained with."""
        return " ".join(self.grid_args) + "\n"

    def checked(self, version: str, d: Path) -> Path:
        """``d``, once it was made with this command's grid options and every run in it says it
        ran on torch ``version``."""
        made = (d / MADE_WITH).read_text() if (d / MADE_WITH).exists() else None
        if made != self.made_with():
            was = f"with `{made.strip()}`" if made is not None else "by an unknown command"
            raise ReleaseError(f"{d} was trained {was}, not `{self.made_with().strip()}`: delete it or choose another --out")
        ran = set(report.read(d / report.RUNS)["torch_version"].dropna().astype(str).str.split("+").str[0])
        if self.check_versions and ran - {version}:
            raise ReleaseError(f"{d} holds runs of torch {', '.join(sorted(ran))}, not {version}: delete it to rerun")
        return d


def judged(base_dir: Path, cand_dir: Path, tolerances: pd.DataFrame | None, margin: float,
           policy: compare.Policy) -> pd.DataFrame:
    """compare.csv of two report directories (the verdicts of ``diagnostics compare``)."""
    base, cand, steps, _, envelope = compare.load_pair(base_dir, cand_dir)
    return compare.compare_reports(base, cand, *steps, tolerances=tolerances, envelope=envelope, margin=margin,
                                   policy=policy)


SAME = ("identical",)  # a config whose verdict against V1 is one of these has not changed


def changed(verdict: str, equivalent_is_same: bool) -> bool:
    return verdict not in SAME + (("equivalent",) if equivalent_is_same else ())


def bisect(versions: list[str], sessions: Sessions, tolerances=None, margin: float = compare.MARGIN,
           equivalent_is_same: bool = True) -> pd.DataFrame:
    """Per config of the grid: the first of ``versions`` (in the given order) whose verdict against
    ``versions[0]`` changed, by binary search between the first and the last (each version is
    trained at most once, for all configs together). A config whose last version is unchanged
    says so. Assumes a change, once made, stays (a flip back between two probes is not seen)."""
    first = sessions.run(versions[0])
    verdicts: dict[str, dict] = {}

    def verdict_at(i: int) -> dict:
        if versions[i] not in verdicts:
            table = judged(first, sessions.run(versions[i]), tolerances, margin, compare.Policy())
            verdicts[versions[i]] = {r["run_id"]: r for r in table.to_dict("records")}
        return verdicts[versions[i]]

    last = verdict_at(len(versions) - 1)
    rows = []
    for run_id, end in sorted(last.items()):
        row = {c: end.get(c) for c in compare.CONFIG} | dict(run_id=run_id)
        if not changed(end["verdict"], equivalent_is_same):
            rows.append(row | dict(first_changed="", last_same=versions[-1], verdict=end["verdict"], detail=""))
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
                               detail=at["detail"]))
    return pd.DataFrame(rows)


def failing(table: pd.DataFrame, policy: compare.Policy) -> list[dict]:
    """The rows of a bisect table whose verdict at the last version fails ``policy`` (bisect
    exits 1 on them, as compare does)."""
    return [r for r in table.to_dict("records") if policy.failure(r)]
