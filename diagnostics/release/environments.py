"""One virtual environment per torch version (a release, a wheel, a folder of wheels), built once
by pip and reused, disk-bounded (``Environments.keep``): that torch, the matching torchvision where
one installs beside it, and this package, editable.

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

from diagnostics import paths
from diagnostics.errors import DiagnosticsError

ROOT = paths.CHECKOUT
DEFAULT_ENVS_DIR = paths.RELEASE_ENVS_DIR
READY = ".ready"  # written last: an environment without it is rebuilt; its mtime is the last use
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

    def execute(self, cand: Candidate | str, args: list[str], capture: bool = False) -> subprocess.CompletedProcess:
        """``diagnostics ARGS`` in the candidate's environment, run from the checkout: its exit
        status, and with ``capture`` its output (otherwise it goes to this process's). Every
        command a release session runs in an environment goes through here."""
        return subprocess.run([*self.command(cand), *args], cwd=ROOT, capture_output=capture, text=True)

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


