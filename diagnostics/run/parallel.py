"""Distributed training of a grid point (``grid.parallel``): DDP or FSDP2 on a world of ranks.

``run(spec, ...)`` trains a ``ddp`` or ``fsdp`` point on a ``RankGroup``: ``world`` processes
started once per session process and reused for every distributed point after (torch's import
alone costs seconds a process), each serving one point at a time through ``train.run`` with its
``Ranks``. Rank ``r`` takes rows ``r::world`` of the very global batch one process trains on, each
rank's loss weighted so that the average of the ranks' gradients is the global batch's (equal
shards: weight 1; padded batches: ``world x`` its share of the real targets), so the run computes
the single-process function up to the order of sums. The loss, gradient norm and every signal the
Monitor reads are reduced over the ranks, so every rank takes the same decisions; rank 0's
result is the run's. The row carries ``world_size``, ``backend`` and, observed on the collectives
of the first backward (``CollectiveDtypes``), the dtype parameters were gathered in and gradients
reduced in: what torch resolved, not what the code asked.

A rank that dies or hangs ends its point with an ``error`` row naming the rank and its last
lines within ``RANK_TIMEOUT_S``; the group is then started afresh for the next point.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import socket
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from diagnostics.errors import DiagnosticsError
from diagnostics.grid import data
from diagnostics.grid import parallel as axis
from diagnostics.grid.layout import IGNORE
from diagnostics.grid.models import build_model
from diagnostics.grid.recipes import build_optimizer, build_schedule
from diagnostics.grid.spec import RunSpec

# A point's time limit on its ranks, and the collectives' own (a peer that stopped answering):
# 15 min is ~5x the slowest distributed point of the CPU presets measured here (gpt, 60 steps,
# 2 ranks on 2 cores: docs/concepts/parallel.md), so only a hang reaches it.
RANK_TIMEOUT_S = 900
LAST_LINES = 5  # of a dead rank's output, in its error row
PORT_ENV = "MASTER_PORT"  # a port the user gives (as for torchrun); else a free one is taken
WORLD_ENV = "DIAGNOSTICS_WORLD_SIZE"  # --world-size, for every process of the session


class ParallelError(DiagnosticsError):
    """A world this machine cannot hold, or a port already taken; one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port() -> int:
    """The rendezvous port: ``MASTER_PORT`` where set (checked free), else a free one."""
    given = os.environ.get(PORT_ENV)
    if not given:
        return free_port()
    try:
        number = int(given)
    except ValueError:
        raise ParallelError(f"{PORT_ENV}={given!r} is not a port number") from None
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", number))
        except OSError as e:
            raise ParallelError(f"{PORT_ENV}={number}: the port is in use ({e.strerror}); free it or set another, "
                                "or unset it to take a free one") from None
    return number


def asked_world() -> int | None:
    """The world size the session asked for (``--world-size``), None for the default."""
    given = os.environ.get(WORLD_ENV)
    if not given:
        return None
    try:
        return int(given)
    except ValueError:
        raise ParallelError(f"--world-size {given!r} is not an integer") from None


def check_world(device_type: str, world: int | None) -> int:
    """The world size distributed points of ``device_type`` run with; raises ParallelError with
    one line where this machine cannot hold it (a one-GPU machine is a stated skip, not this)."""
    gpus = torch.cuda.device_count() if device_type == "cuda" else 0
    size = axis.world_size(device_type, gpus, world)
    why = axis.unavailable(device_type, size, gpus, os.cpu_count() or 1)
    if why and not (device_type == "cuda" and world is None):
        raise ParallelError(why)
    return size


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def unsupported(spec: RunSpec, data_dir, world: int | None = None) -> str:
    """Why this machine and torch cannot train the distributed point ("" when they can): the
    axis's own rules, the devices, the wrapper's presence in this release, and a CPU model with
    BatchNorm (without SyncBatchNorm each rank would normalise its half-batch with its own
    statistics: another function, which no tolerance for rounding covers)."""
    from diagnostics.run import train

    device_type = torch.device(spec.device).type
    why = axis.unsupported(spec.parallel, spec.precision, spec.compile) or train.unsupported(spec)
    if why:
        return why
    if not torch.distributed.is_available():
        return "this torch was built without torch.distributed"
    gpus = torch.cuda.device_count() if device_type == "cuda" else 0
    why = axis.unavailable(device_type, axis.world_size(device_type, gpus, world), gpus, os.cpu_count() or 1)
    if why:
        return why
    if spec.parallel == "fsdp" and fully_shard_api() is None:
        return f"torch {torch.__version__} has no FSDP2 fully_shard"
    if device_type == "cpu" and has_batchnorm(build_model(spec.model, spec.model_size,
                                                          data.for_model(spec.model, spec.model_size, data_dir).info)):
        return (f"{spec.parallel} on the CPU: {spec.model} has BatchNorm, and without SyncBatchNorm (CUDA only) each "
                "rank normalises its own rows: another function than one process trains")
    return ""


def fully_shard_api():
    """(fully_shard, MixedPrecisionPolicy) of this torch: public since 2.6, under
    ``_composable`` in 2.4 and 2.5; None before."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:
            return None
    return fully_shard, MixedPrecisionPolicy


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards on their own before the root: each transformer block (``blocks``),
    each residual block of a ResNet's stages (``stages``, or torchvision's ``layer1..4``)."""
    net = getattr(model, "net", model)
    if hasattr(net, "blocks"):
        return list(net.blocks)
    if hasattr(net, "stages"):
        return list(net.stages)
    return [block for name in ("layer1", "layer2", "layer3", "layer4") if hasattr(net, name)
            for block in getattr(net, name)]


class CollectiveDtypes:
    """A dispatch mode, armed for the first backward, that notes the dtype of every gather and
    reduction the wrapper issues (``c10d`` ops): what torch resolved, whatever was asked."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        seen = self.seen = {"gather": set(), "reduce": set()}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func)
                kind = ("reduce" if "reduce" in name else "gather" if "gather" in name else None) if "c10d" in name \
                    else None
                if kind:
                    flat = [a for a in args if isinstance(a, torch.Tensor)] + [
                        t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
                    seen[kind].update(str(t.dtype).removeprefix("torch.") for t in flat)
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    def dtype(self, kind: str, default: str) -> str:
        return ",".join(sorted(self.seen[kind])) or default


@dataclass
class Ranks:
    """What ``train.run`` needs to train on a world of ranks (its default ``ONE_PROCESS`` is one
    process): this rank's rows of a batch, reductions over the ranks, the wrapped model."""

    parallel: str  # ddp or fsdp
    rank: int
    world: int
    device_type: str
    collectives: CollectiveDtypes | None = None  # armed for the first backward (fsdp)
    info: dict = field(default_factory=dict)  # the row's world_size, backend, param_dtype, reduce_dtype

    def rows(self, x: tuple[torch.Tensor, ...], y: torch.Tensor):
        """This rank's rows of the global batch and the weight of its mean loss (None: 1), such
        that the ranks' averaged gradient is the global batch's mean-loss gradient."""
        mine = (tuple(t[self.rank::self.world] for t in x), y[self.rank::self.world])
        if y.dim() < 2:  # one target per row, equal shards: the mean of the shard means
            return (*mine, None)
        real = (y != IGNORE).sum()
        return (*mine, self.world * (mine[1] != IGNORE).sum() / real)

    def mean(self, loss: torch.Tensor) -> torch.Tensor:
        """The global batch's loss from each rank's weighted loss."""
        total = loss.detach().float().clone()
        torch.distributed.all_reduce(total)
        return total / self.world

    def norms(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Per-parameter gradient norms of the whole gradient: DDP's are whole on every rank;
        FSDP's are shards, their squares summed over the ranks."""
        if self.parallel == "ddp":
            return torch.stack(torch._foreach_norm(grads))
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        squares = torch.stack(torch._foreach_norm(local)).float().square()
        torch.distributed.all_reduce(squares)
        return squares.sqrt()

    def inner(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def weights_sha256(self, model: nn.Module, hash_state) -> str:
        """The whole model's hash as one process would compute it (FSDP's shards gathered)."""
        inner = self.inner(model)
        if self.parallel == "ddp":
            return hash_state(inner)
        full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in inner.state_dict().items()}
        holder = nn.Module()
        holder.state_dict = lambda: full  # hash_state reads state_dict() only
        return hash_state(holder)

    def wrap(self, s, spec: RunSpec):
        """The Setup trained on this world: DDP around the model, or FSDP2 sharding it in place
        (then the optimizer and schedule are built again over the sharded parameters)."""
        self.info = dict(world_size=self.world, backend=axis.backend(self.device_type), param_dtype="", reduce_dtype="")
        if self.device_type == "cuda":  # statistics over the global batch, as one process (the same Parameters)
            s.model = nn.SyncBatchNorm.convert_sync_batchnorm(s.model)
        if self.parallel == "ddp":
            s.model = nn.parallel.DistributedDataParallel(s.model)
            grad = str(s.params[0].dtype).removeprefix("torch.")
            self.info.update(param_dtype=grad, reduce_dtype=grad)  # DDP all-reduces the gradients as they are
            return s
        fully_shard, policy_of = fully_shard_api()
        policy = policy_of(param_dtype=torch.bfloat16) if spec.precision == "bf16" else policy_of()
        mesh = device_mesh(self.device_type, self.world)
        for unit in shard_units(s.model):
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(s.model, mesh=mesh, mp_policy=policy)
        s.opt, s.opt_kw = build_optimizer(spec.optimizer, s.model, spec.lr_scale, spec.impl)
        s.sched, s.sched_kw = build_schedule(s.opt, spec.scheduler, spec.warmup, spec.steps)
        s.params = [p for g in s.opt.param_groups for p in g["params"]]
        if policy_point(spec):
            s.autocast = nullcontext()  # the policy casts the parameters; people add no autocast to it
        self.collectives = CollectiveDtypes()
        return s

    def observe(self, step: int):
        """The dispatch mode to enter around step ``step``'s backward (the first only)."""
        return self.collectives.mode if self.collectives is not None and step == 1 else nullcontext()

    @property
    def restorable(self) -> bool:
        """FSDP2 keeps gathered parameters a state dict does not restore: its step reruns from a
        fresh start (``train.locate``)."""
        return self.parallel != "fsdp"

    def anywhere(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
        t = torch.tensor([float(flag)])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def wrapper_failure(self, e: Exception) -> str:
        """Why this torch's wrapper cannot run here, where ``e`` was raised inside torch's own
        distributed code (torch/distributed/: 2.6.0's FSDP2 all-gather on a gloo CPU mesh), else ""."""
        import traceback

        frames = traceback.extract_tb(e.__traceback__)
        if not frames or f"torch{os.sep}distributed{os.sep}" not in frames[-1].filename:
            return ""
        line = str(e).splitlines()[0] if str(e) else ""
        return (f"torch {torch.__version__}'s {self.parallel} cannot run on {axis.backend(self.device_type)} "
                f"({self.device_type}): {type(e).__name__}: {line} [{frames[-1].name}]")

    def origin(self, found):
        """The run's NaN origin from every rank's replay of the step (``origin.across_ranks``)."""
        from diagnostics.run import origin

        every = [None] * self.world
        torch.distributed.all_gather_object(every, found)
        return origin.across_ranks(every)

    def observed(self) -> dict:
        if self.collectives is not None:
            self.info.update(param_dtype=self.collectives.dtype("gather", "float32"),
                             reduce_dtype=self.collectives.dtype("reduce", "float32"))
        return self.info


def device_mesh(device_type: str, world: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world,))


# --- the rank processes ------------------------------------------------------------------------

def _serve(rank: int, world: int, rendezvous: int, device_type: str, conn, log_path: str) -> None:
    """A rank's life: join the process group once, then serve each job the parent sends, a
    function called with its arguments and this rank's ``Ranks`` (``train_point``, or the
    numerics trace of a family), until it sends None. Rank 0 answers with the function's value,
    the others with "done"."""
    import sys

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (the process's output for its whole life)
    os.dup2(log.fileno(), sys.stdout.fileno())
    os.dup2(log.fileno(), sys.stderr.fileno())
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(rendezvous))
    from diagnostics.run import determinism

    if device_type == "cuda":
        determinism.configure_process()
        torch.cuda.set_device(rank)
    torch.distributed.init_process_group(axis.backend(device_type), rank=rank, world_size=world,
                                         timeout=dt.timedelta(seconds=RANK_TIMEOUT_S))
    try:
        while True:
            job = conn.recv()
            if job is None:
                break
            fn, spec, kwargs = job
            try:
                answer = fn(spec, ranks=Ranks(spec.parallel, rank, world, device_type), **kwargs)
            except Exception as e:  # said to the parent, which starts the group afresh (peers may be mid-collective)
                conn.send(RankFailed(rank, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
                continue
            conn.send(answer if rank == 0 else "done")
    finally:
        torch.distributed.destroy_process_group()


@dataclass
class RankGroup:
    """``world`` rank processes (spawned: a fresh interpreter each, as torchrun's) serving points
    one at a time; started once and reused, started afresh after a failure."""

    device_type: str
    world: int
    procs: list = field(default_factory=list)
    conns: list = field(default_factory=list)
    logs: list = field(default_factory=list)
    folder: tempfile.TemporaryDirectory | None = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.folder = tempfile.TemporaryDirectory(prefix="diagnostics-ranks-")
        rendezvous = port()
        for rank in range(self.world):
            parent, child = ctx.Pipe()
            log = str(Path(self.folder.name) / f"rank{rank}.log")
            proc = ctx.Process(target=_serve, args=(rank, self.world, rendezvous, self.device_type, child, log),
                               daemon=True, name=f"diagnostics-rank{rank}")
            proc.start()
            self.procs.append(proc)
            self.conns.append(parent)
            self.logs.append(log)

    def alive(self) -> bool:
        return bool(self.procs) and all(p.is_alive() for p in self.procs)

    def last_lines(self, rank: int) -> str:
        try:
            lines = Path(self.logs[rank]).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in lines[-LAST_LINES:])

    def train(self, spec: RunSpec, kwargs: dict, timeout: float = RANK_TIMEOUT_S):
        """Rank 0's RunResult of ``spec`` (``train_point``); a ``DeadRank`` where a rank died or
        did not answer in ``timeout`` seconds."""
        return self.call(train_point, spec, kwargs, timeout)

    def call(self, fn, spec: RunSpec, kwargs: dict, timeout: float = RANK_TIMEOUT_S):
        """Rank 0's value of ``fn(spec, ranks=..., **kwargs)`` run on every rank (a top-level
        function: the ranks import it by name); a ``DeadRank`` where a rank died or did not answer
        in ``timeout`` seconds."""
        if not self.alive():
            self.stop()
            self.start()
        for conn in self.conns:
            conn.send((fn, spec, kwargs))
        answers: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < self.world:
            for rank, conn in enumerate(self.conns):
                if rank in answers:
                    continue
                if conn.poll(0.2):
                    try:
                        answers[rank] = conn.recv()
                    except (EOFError, OSError):
                        return self.failed(rank, "its connection closed")
                    if isinstance(answers[rank], RankFailed):
                        self.stop(at_once=True)  # its peers may wait in a collective for it
                        return answers[rank]
                elif not self.procs[rank].is_alive():
                    return self.failed(rank, f"exit code {self.procs[rank].exitcode}")
            if time.monotonic() > deadline:
                waiting = [r for r in range(self.world) if r not in answers]
                return self.failed(waiting[0], f"no answer within {timeout:.0f} s")
        return answers[0]

    def failed(self, rank: int, how: str):
        # a rank blocked in a collective waits for its peer: every rank's own error names the
        # dead one less plainly than this; the group is started afresh for the next point
        time.sleep(0.5)
        lines = self.last_lines(rank)
        self.stop(at_once=True)
        return DeadRank(rank, how, lines)

    def stop(self, at_once: bool = False) -> None:
        """Ask each rank to leave (``at_once``: kill it, for a group that failed: a rank blocked
        in a collective or training on would not read the request)."""
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=0 if at_once else 5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        self.procs, self.conns, self.logs = [], [], []
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None


def train_point(spec: RunSpec, ranks: Ranks, **kwargs):
    """A rank's ``train.run`` of a distributed point: its RunResult, the row carrying the world,
    the backend and the dtypes the collectives ran in."""
    from diagnostics.run import train

    result = train.run(spec, ranks=ranks, **kwargs)
    result.row.update(ranks.info)
    return result


@dataclass(frozen=True)
class RankFailed:
    """A job that raised on a rank (its process lives on): the rank and the exception's line."""

    rank: int
    line: str

    def reason(self) -> str:
        return f"rank {self.rank} raised {self.line}"


@dataclass(frozen=True)
class DeadRank:
    rank: int
    how: str
    last_lines: str

    def reason(self) -> str:
        return f"rank {self.rank} died ({self.how}); its last lines: {self.last_lines or '(none)'}"


_GROUPS: dict[tuple[str, int], RankGroup] = {}


def group(device_type: str, world: int) -> RankGroup:
    """This process's rank group for (device type, world size), started on first use and stopped
    at exit."""
    key = (device_type, world)
    if key not in _GROUPS:
        import atexit

        _GROUPS[key] = RankGroup(device_type, world)
        atexit.register(_GROUPS[key].stop)
    return _GROUPS[key]


def run(spec: RunSpec, world: int | None = None, timeout: float = RANK_TIMEOUT_S, **kwargs):
    """Any grid point: ``train.run`` in this process for ``parallel`` none; a distributed point
    on this process's rank group, rank 0's RunResult, its row carrying the world, backend and the
    dtypes the collectives ran in. A point this stack cannot run is ``skipped`` with the reason; a
    rank that dies is an ``error`` row naming it. ``kwargs``: ``train.run``'s, by keyword."""
    from diagnostics.run import train

    if spec.parallel == "none":
        return train.run(spec, **kwargs)
    world = asked_world() if world is None else world
    worker = kwargs.get("worker", "")
    data_dir = kwargs.get("data_dir") or train.DEFAULT_DATA_DIR
    why = unsupported(spec, data_dir, world)
    if why:
        result = train.skipped_row(spec, worker, why)
        result.row["started_at"] = train.utc_now()
        return result
    device_type = torch.device(spec.device).type
    size = axis.world_size(device_type, torch.cuda.device_count() if device_type == "cuda" else 0, world)
    data.for_model(spec.model, spec.model_size, data_dir, kwargs.get("data_root"), spec.context)  # written once, here
    started = train.utc_now()
    answer = group(device_type, size).train(spec, kwargs, timeout)
    result = answered(spec, answer, worker, size)
    result.row["started_at"] = started
    return result


def answered(spec: RunSpec, answer, worker: str, world: int):
    """Rank 0's RunResult, or the ``error`` row of a rank that died or raised (naming it)."""
    from diagnostics.run import train

    if not isinstance(answer, (DeadRank, RankFailed)):
        return answer
    result = train.RunResult(dict(train.identity(spec), status="error", status_reason=answer.reason()))
    result.row.update(train.provenance(spec, worker), world_size=world,
                      backend=axis.backend(torch.device(spec.device).type))
    return result


def one_process_of(spec: RunSpec) -> RunSpec:
    """The single-process point a distributed one is checked against (``judge.parallel``): the
    same config and seed with ``parallel`` none; for FSDP2's bf16 policy, which no single-process
    recipe computes, the same point (``reference``: on a world of one process)."""
    return spec if policy_point(spec) else replace(spec, parallel="none")


def policy_point(spec: RunSpec) -> bool:
    """Whether the point trains under FSDP2's bf16 mixed-precision policy."""
    return spec.parallel == "fsdp" and spec.precision == "bf16"


def reference(spec: RunSpec, timeout: float = RANK_TIMEOUT_S, **kwargs):
    """The single-process run a distributed point is checked against (``one_process_of``): plain
    ``train.run``, or for the bf16 policy the same wrapper and policy on one rank, where the
    gradients are reduced over nothing."""
    from diagnostics.run import train

    if not policy_point(spec):
        return train.run(one_process_of(spec), **kwargs)
    device_type = torch.device(spec.device).type
    answer = group(device_type, 1).train(spec, kwargs, timeout)
    return answered(spec, answer, kwargs.get("worker", ""), 1)
