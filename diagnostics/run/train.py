"""``run(spec) -> RunResult``: build data, model and recipe, train, judge, measure.

Per step the loop records the LR the optimizer step used, the loss, the global gradient norm
(before clipping, where the run clips), per-layer gradient norms (for the Monitor) and the host
time since the loop began; on every read step also the update-to-weight ratio and, when asked,
the gpt's instability probes. Values stay on the
device and are read in batches of ``SYNC_EVERY`` steps (one host synchronisation per batch), then
fed to ``detect.Monitor``; a diverged run stops at the next read, within ``SYNC_EVERY`` steps.
A run that raises returns a row with status ``error`` and the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
import torch

from diagnostics import paths
from diagnostics.detect import STATUS_FIELDS, Monitor, Thresholds
from diagnostics.grid import attention, compat, data, precision
from diagnostics.grid.layout import FULL, IGNORE
from diagnostics.grid.models import MODELS, build_model, count_params, logits_loss
from diagnostics.grid.recipes import UnsupportedImpl, after_optimizer_step, build_optimizer, build_schedule
from diagnostics.grid.spec import RunSpec
from diagnostics.run import checkpoint, determinism, env, origin, perturb
from diagnostics.run.faults import NO_FAULT, Fault

SYNC_EVERY = 10  # steps between host reads of loss / grad norm (and RSS samples)
MB = 1024 * 1024
DEFAULT_DATA_DIR = paths.DATA_DIR


@dataclass
class RunResult:
    row: dict  # one runs.csv row
    steps: list[dict] = field(default_factory=list)  # steps.csv rows
    events: list[dict] = field(default_factory=list)  # events.csv rows

    @property
    def status(self) -> str:
        return self.row["status"]


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict in key order: name, dtype, shape and raw bytes of each
    tensor, so equal hashes mean bitwise-equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class StepLog:
    """Per-step values kept on the device and read to the host in one synchronisation per
    ``read`` (every SYNC_EVERY steps): they become steps.csv rows and feed the Monitor. With fp16
    loss scaling each step also carries its scale; a step whose gradients overflowed (the scaler
    skipped it) is marked ``skipped``."""

    def __init__(self, run_id: str, layer_names: list[str], monitor: Monitor, scaled: bool = False):
        self.run_id, self.layer_names, self.monitor, self.scaled = run_id, layer_names, monitor, scaled
        self.pending: list[tuple[int, float, torch.Tensor, float]] = []
        self.rows: list[dict] = []
        self.max_grad_norm = 0.0
        self.skipped_steps = 0

    def add(self, step: int, lr: float, loss: torch.Tensor, grad_norm: torch.Tensor, per_layer: torch.Tensor,
            elapsed: float, grad_scale: torch.Tensor | None = None) -> None:
        scale = (grad_scale.float().view(1),) if self.scaled else ()
        values = torch.cat((loss.detach().float().view(1), grad_norm.float().view(1), *scale, per_layer))
        self.pending.append((step, lr, values, elapsed))

    def read(self, sampled: dict[str, torch.Tensor]) -> None:
        """Host-read everything pending; ``sampled`` (signals measured on this step only) joins
        the row of the last pending step."""
        last = self.pending[-1][0]
        stacked = torch.stack([v for _, _, v, _ in self.pending])
        extra = [v.float().view(1) for v in sampled.values()]
        flat = torch.cat([stacked.flatten(), *extra]).tolist()  # the one host synchronisation
        width = stacked.shape[1]
        values = [flat[i:i + width] for i in range(0, stacked.numel(), width)]
        extra = dict(zip(sampled, flat[stacked.numel():]))
        for (step, lr, _, elapsed), (loss, grad_norm, *rest) in zip(self.pending, values):
            scale, per_layer = (rest[0], rest[1:]) if self.scaled else (None, rest)
            amp = {}
            if self.scaled:
                skipped = not math.isfinite(grad_norm)  # GradScaler skips exactly the steps with inf/NaN gradients
                self.skipped_steps += skipped
                amp = dict(grad_scale=scale, skipped=int(skipped))
            self.rows.append(dict(run_id=self.run_id, step=step, lr=lr, loss=loss, grad_norm=grad_norm,
                                  elapsed_s=elapsed, **amp, **(extra if step == last else {})))
            self.monitor.update(step, loss, grad_norm, lr, dict(zip(self.layer_names, per_layer)),
                                grad_scale=scale)
            if math.isfinite(grad_norm):
                self.max_grad_norm = max(self.max_grad_norm, grad_norm)
        self.pending.clear()


@torch.no_grad()
def update_ratio(params: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """||w_after - w_before|| / ||w_after|| over all parameters: how far one optimizer step moved
    the weights, relative to their size."""
    delta = torch._foreach_sub([p.detach() for p in params], before)
    moved = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(delta)))
    size = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in params])))
    return moved / size


def layers_of(model: torch.nn.Module, params: list[torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    """Layer names (the module owning each parameter) and the 0/1 matrix (layers x params)
    that sums each layer's parameters."""
    owner = {id(p): name.rpartition(".")[0] or name for name, p in model.named_parameters()}
    names = list(dict.fromkeys(owner[id(p)] for p in params))
    assign = torch.zeros(len(names), len(params))
    for j, p in enumerate(params):
        assign[names.index(owner[id(p)]), j] = 1.0
    return names, assign


def layer_norms(param_norms: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Per-layer gradient norm: sqrt of the sum of its parameters' squared norms (a matmul,
    deterministic on every device, unlike a scatter-add)."""
    return (assign @ param_norms.float().square()).sqrt()


@contextmanager
def scaled_lr(opt: torch.optim.Optimizer, factor: float):
    """Multiply every group's LR for one optimizer step, then restore it."""
    saved = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = g["lr"] * factor
    try:
        yield
    finally:
        for g, lr in zip(opt.param_groups, saved):
            g["lr"] = lr


class OneProcess:
    """A run's world when it is one process (``Setup.ranks``'s default): the whole batch, nothing
    reduced, the model as built. ``parallel.Ranks`` is the same contract on a world of ranks."""

    info: dict = {}

    def rows(self, x, y):
        return x, y, None

    def mean(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def norms(self, grads: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(torch._foreach_norm(grads))  # one fused kernel for every tensor

    def inner(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def weights_sha256(self, model: torch.nn.Module, hash_state) -> str:
        return hash_state(model)

    def wrap(self, s, spec):
        return s

    def observe(self, step: int):
        return nullcontext()

    def observed(self) -> dict:
        return {}

    def origin(self, found):
        return found

    def wrapper_failure(self, e: Exception) -> str:
        return ""

    def anywhere(self, flag: bool) -> bool:
        return flag

    restorable = True  # a step can run again from a copy of its state (locate)


ONE_PROCESS = OneProcess()


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def identity(spec: RunSpec) -> dict:
    """A row's identity: the run id and every field of its RunSpec, by the field's name, so an
    axis added to RunSpec reaches the row by itself."""
    return dict(run_id=spec.id, **spec.to_dict())


def provenance(spec: RunSpec, worker: str) -> dict:
    row = env.versions()
    row.update(env.memory())
    row.update(device_name=env.device_name(spec.device), num_threads=torch.get_num_threads(), worker=worker)
    return row


@torch.no_grad()
def attention_kernel(s: Setup, spec: RunSpec, device) -> str:
    """The attention kernel(s) the run's steps dispatched to ("" for a model without attention).
    A compiled run's attention was traced, not dispatched: one eager forward of a held-out batch
    (after training and evaluation, so nothing the run measured changes) asks instead."""
    rec = attention.Recorder.active
    if rec is None or not MODELS[spec.model].has_attention:
        return ""
    if not rec.kernels:
        inputs, _ = next(iter(data.val_batches(s.ds, device, layout=spec.layout)))
        s.model.eval()
        with s.autocast:
            s.model.forward(*inputs)  # forward, not __call__: the eager module, not its compiled call
        s.model.train()
    return rec.name() or "not observed"


@torch.no_grad()
def evaluate(model, ds: data.Dataset, device, autocast, layout: str = "full") -> tuple[float, float, str, int]:
    """(val_loss, val_metric, metric name, number of predictions the metric counts) on the
    held-out split, laid out as the run's batches (``layout``). The metric is an accuracy for
    both tasks, a second signal beside the loss: the class accuracy of an image model (counted
    per image), the next-token accuracy of an LM (the argmax of each real position's logits
    against its target, counted per real token: padding targets count in neither). The loss is
    ``task_loss``'s own (``models.logits_loss``: the mean over real tokens), each batch weighted
    by what it scored, so its bits do not depend on the metric."""
    model.eval()
    total_loss, total_correct, n_scored = 0.0, 0, 0
    for inputs, y in data.val_batches(ds, device, layout=layout):
        with autocast:
            logits = model(*inputs).float()
            loss = logits_loss(logits, ds.task, y)
            total_correct += int((logits.argmax(-1) == y).sum())  # a padding target (IGNORE) is never an argmax
        scored = int((y != IGNORE).sum())
        total_loss += float(loss) * scored
        n_scored += scored
    model.train()
    name = "val_token_accuracy" if ds.task == "lm" else "val_accuracy"
    return total_loss / n_scored, total_correct / n_scored, name, n_scored


def skipped_row(spec: RunSpec, worker: str, reason: str) -> RunResult:
    """The row of a run this stack cannot do (the suite reports a skip with the reason)."""
    row = dict(identity(spec), status="skipped", status_reason=reason)
    row.update(provenance(spec, worker))
    return RunResult(row)


def unsupported(spec: RunSpec) -> str:
    """Why this grid point cannot run on this stack, before anything is built ("" if it can)."""
    if MODELS[spec.model].needs_torchvision and env.torchvision_status()[1]:
        return env.torchvision_status()[1]  # e.g. torch 2.13.0's CPU wheel: no torchvision loads beside it
    if spec.layout not in MODELS[spec.model].layouts:
        return f"{spec.model} takes {', '.join(MODELS[spec.model].layouts)} batches only, not {spec.layout}"
    device_type = torch.device(spec.device).type
    return (precision.unsupported(spec.precision, device_type) or attention.unsupported(spec.attention, device_type)
            or (compat.compile_unsupported() if spec.compile != "none" else ""))


def run(spec: RunSpec, data_dir: Path = DEFAULT_DATA_DIR, data_root: str | None = None,
        thresholds: Thresholds | None = None, worker: str = "", fault: Fault | None = None,
        probes: bool = False, stop_after: int | None = None, checkpoint_path: Path | None = None,
        resume_from: Path | None = None, perturbation: str | None = None, init_dir: Path | None = None,
        ranks=None) -> RunResult:
    """Train one grid point. Never raises for a failing run: the row says ``error`` and why
    (a point this stack cannot run, e.g. fused Lion or TF32 on CPU, is ``skipped`` and says why).
    ``fault`` injects a failure (tests and benchmarks of the detectors); ``probes`` adds the
    gpt's attention-logit and output log-partition probes on every read step (one extra forward
    pass each). ``stop_after=k`` with ``checkpoint_path`` trains steps 1..k and saves a
    checkpoint; ``resume_from`` loads one and trains the remaining steps (the step log then starts
    after the checkpoint's step). A resumed run's Monitor starts afresh. ``perturbation`` (a name
    in ``perturb.PERTURBATIONS``) changes only the run's rounding, for calibration. ``init_dir``:
    the initial weights of (model, size, seed) are saved there by the first run and loaded by
    every later one (``initial_weights``). A ``ddp`` or ``fsdp`` point trains through
    ``parallel.run`` on its rank group, each rank calling this with its ``ranks``."""
    if spec.parallel != "none" and ranks is None:
        return error_row(spec, worker, ValueError(f"a {spec.parallel} point trains on ranks: run.parallel.run"))
    started = utc_now()
    fault = fault or NO_FAULT
    reason = unsupported(spec)
    if reason:
        result = skipped_row(spec, worker, reason)
        result.row["started_at"] = started
        return result
    try:
        with determinism.nondeterministic_ops() as nondeterministic, attention.context(spec.attention), \
                attention.recording():
            result = _train(spec, Path(data_dir), data_root, thresholds or Thresholds(), worker, fault, probes,
                            stop_after, checkpoint_path, resume_from, perturb.get(perturbation), init_dir,
                            ranks or ONE_PROCESS)
        if nondeterministic:
            result.row["deterministic"] = False
            result.row["status_reason"] += f"; nondeterministic ops: {', '.join(sorted(set(nondeterministic)))}"
    except UnsupportedImpl as e:
        result = skipped_row(spec, worker, str(e))
    except RuntimeError as e:
        if attention.NO_KERNEL not in str(e):
            result = error_row(spec, worker, e)
        else:  # a forced attention kernel that does not take this run's inputs (e.g. CUDA flash in fp32)
            result = skipped_row(spec, worker, f"{spec.attention} attention: {str(e).splitlines()[0].strip()}")
    except Exception as e:  # the row must exist whatever broke
        cannot = (ranks or ONE_PROCESS).wrapper_failure(e)
        result = skipped_row(spec, worker, cannot) if cannot else error_row(spec, worker, e)
    result.row["started_at"] = started
    return result


def error_row(spec: RunSpec, worker: str, e: Exception) -> RunResult:
    """The row of a run that raised: the exception's first line and the function it came from."""
    frames = traceback.extract_tb(e.__traceback__)  # none for an exception made, not raised
    row = dict(identity(spec), status="error", status_reason=f"{type(e).__name__}: "
               f"{str(e).splitlines()[0] if str(e) else ''}" + (f" [{frames[-1].name}]" if frames else ""))
    row.update(provenance(spec, worker))
    return RunResult(row)


def initial_weights(model: torch.nn.Module, init_dir, spec: RunSpec) -> None:
    """A seed checkpoint (as torchtitan's loss_compare): with ``init_dir`` (a folder, or a
    ``checkpoint.SeedCheckpoints``), every run of a (model, size, seed), on any release or
    device, loads its initial weights from there (``weights_only=True``), so a change of the
    init RNG between releases does not hide the training numerics behind other starting weights;
    the first run of one the folder lacks saves its freshly initialised weights there (unless the
    folder is read-only: a committed baseline's, outside ``--update-baseline``)."""
    seeds = checkpoint.seed_checkpoints(init_dir)
    if seeds is None:
        return
    path = seeds.path(spec.model, spec.model_size, spec.seed, spec.context)
    if path.exists():
        checkpoint.load_weights(path, model)
    elif seeds.write:
        checkpoint.save_weights(path, model)


@dataclass
class Setup:
    """Everything a run trains with, built by ``setup``."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object  # a torch LR scheduler
    opt_kw: dict  # resolved optimizer kwargs (the recipe column)
    sched_kw: dict  # resolved schedule numbers
    ds: data.Dataset  # on the run's device
    params: list[torch.Tensor]
    batch_size: int
    autocast: object  # context manager of the forward pass
    scaler: torch.amp.GradScaler | None  # fp16 only
    numerics: dict  # float32 matmul settings (tf32, matmul_precision)
    init_sha256: str  # of the weights before the first step
    seeded_init_sha256: str  # of the weights torch's seeded init gave, before any seed checkpoint was loaded
    ranks: object = ONE_PROCESS  # the world it trains on (OneProcess, or parallel.Ranks)


def setup(spec: RunSpec, device: torch.device, data_dir: Path, data_root: str | None,
          perturbation: perturb.Perturbation | None = None, init_dir: Path | None = None, phase=None,
          ranks=ONE_PROCESS) -> Setup:
    """Data, model (initial weights, compile), optimizer, schedule and precision of a run.
    Shared with ``ddp`` (which wraps the model afterwards) and ``numerics`` (whose ``phase``
    records the seeded initialisation as the ``init`` phase)."""
    entry = MODELS[spec.model]
    numerics = precision.set_float32_matmul(spec.precision)
    ds = data.for_model(spec.model, spec.model_size, data_dir, data_root, spec.context)
    with (phase or no_phase)("init"):
        model = build_model(spec.model, spec.model_size, ds.info)
    seeded_sha = weights_sha256(model)  # torch's own seeded init, before a seed checkpoint replaces it
    initial_weights(model, init_dir, spec)
    model = model.to(device)
    if perturbation is not None:
        perturbation.apply(model, device.type, spec.seed)
    init_sha = weights_sha256(model)
    opt, opt_kw = build_optimizer(spec.optimizer, model, spec.lr_scale, spec.impl)
    sched, sched_kw = build_schedule(opt, spec.scheduler, spec.warmup, spec.steps)
    if spec.compile != "none":
        torch._dynamo.reset()  # a fresh model: no guards or recompile budget left from earlier runs
        model.compile(backend=spec.compile)  # in place: state-dict keys and the loss method unchanged
    s = Setup(model, opt, sched, opt_kw, sched_kw, data.on_device(ds, device),
              [p for g in opt.param_groups for p in g["params"]], entry.batch_size[spec.model_size],
              precision.autocast(spec.precision, device.type), precision.grad_scaler(spec.precision, device.type),
              numerics, init_sha, seeded_sha, ranks)
    return ranks.wrap(s, spec)


def _train(spec: RunSpec, data_dir: Path, data_root: str | None, thresholds: Thresholds, worker: str,
           fault: Fault, probes: bool, stop_after: int | None = None, checkpoint_path: Path | None = None,
           resume_from: Path | None = None, perturbation: perturb.Perturbation | None = None,
           init_dir: Path | None = None, ranks=ONE_PROCESS) -> RunResult:
    device = torch.device(spec.device)
    deterministic = determinism.apply(spec.seed, spec.device)
    s = setup(spec, device, data_dir, data_root, perturbation, init_dir, ranks=ranks)
    monitor = Monitor(loss_floor=s.ds.loss_floor, thresholds=thresholds)
    proc = psutil.Process()
    peak_rss = proc.memory_info().rss
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    first_step = 1 + (checkpoint.load(resume_from, spec.id, s.model, s.opt, s.sched, s.scaler) if resume_from else 0)
    last_step = min(stop_after or spec.steps, spec.steps)

    layer_names, layer_assign = layers_of(s.ranks.inner(s.model), s.params)
    layer_assign = layer_assign.to(device)
    step_log = StepLog(spec.id, layer_names, monitor, scaled=s.scaler is not None)
    t0 = time.perf_counter()
    for step in range(first_step, last_step + 1):
        read = step % SYNC_EVERY == 0 or step == last_step  # values reach the host on these steps
        out = train_step(s, spec, step, fault, perturbation, keep_weights=read)
        step_log.add(step, out.lr, out.loss, out.grad_norm, layer_norms(out.param_norms, layer_assign),
                  time.perf_counter() - t0, out.grad_scale)
        if read:
            sampled = dict(update_ratio=update_ratio(s.params, out.before)) if ranks is ONE_PROCESS else {}
            if probes and hasattr(s.model, "probes"):
                with s.autocast:
                    sampled.update(s.model.probes(*out.x))
            step_log.read(sampled)
            peak_rss = max(peak_rss, proc.memory_info().rss)
            if monitor.diverged:
                break
    if on_cuda:
        torch.cuda.synchronize()
    runtime = time.perf_counter() - t0
    if stop_after is not None and checkpoint_path is not None and not monitor.diverged:
        checkpoint.save(checkpoint_path, spec.id, last_step, s.model, s.opt, s.sched, s.scaler)

    val_loss, val_metric, metric_name, val_samples = evaluate(s.model, s.ds, device, s.autocast, spec.layout)
    run_status = monitor.status()
    events = [dict(run_id=spec.id, **e.__dict__) for e in monitor.events]
    if run_status.status == "diverged_nonfinite":
        run_status, events = with_origin(spec, run_status, events, step_log, data_dir, data_root, init_dir, perturbation,
                                         fault, resume_from, ranks)
    row = result_row(spec, s, run_status, step_log, thresholds)
    row["sdpa_backend"] = attention_kernel(s, spec, device)
    row.update(
        val_loss=val_loss, val_metric=val_metric, val_metric_name=metric_name, val_samples=val_samples,
        runtime_s=runtime, steps_per_s=len(step_log.rows) / runtime, samples_per_s=len(step_log.rows) * s.batch_size / runtime,
        peak_rss_mb=peak_rss / MB, peak_device_mem_mb=torch.cuda.max_memory_allocated() / MB if on_cuda else math.nan,
        deterministic=deterministic, perturbation=perturbation.name if perturbation is not None else "none",
    )
    row.update(provenance(spec, worker))
    row.update(ranks.observed())
    return RunResult(row, step_log.rows, events)


def first_nonfinite_step(rows: list[dict], scaled: bool) -> int | None:
    """The first step whose loss, or gradient norm, is NaN or inf (under fp16 loss scaling an
    overflowing gradient is a step the scaler skips, not a divergence: the loss alone counts)."""
    for r in rows:
        if not math.isfinite(r["loss"]) or (not scaled and not math.isfinite(r["grad_norm"])):
            return int(r["step"])
    return None


def snapshot(s: Setup) -> dict:
    """Everything a step reads and writes besides its batch (a function of seed and step): the
    weights, the optimizer's and schedule's state and the loss scaler's, copied."""
    import copy

    return copy.deepcopy(dict(model=s.model.state_dict(), opt=s.opt.state_dict(), sched=s.sched.state_dict(),
                              scaler=s.scaler.state_dict() if s.scaler is not None else None))


def restore(s: Setup, state: dict) -> None:
    s.model.load_state_dict(state["model"])
    s.opt.load_state_dict(state["opt"])
    s.sched.load_state_dict(state["sched"])
    if s.scaler is not None:
        s.scaler.load_state_dict(state["scaler"])


def same_bits(a: float, b: float) -> bool:
    """Two logged values equal bit for bit (NaN equals NaN)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def departure(replayed: dict[int, float], logged: dict[int, float]) -> str:
    """How far a replay was from the run, in one line: the first step whose loss differs bit for
    bit, and by how much, or that every step it shares with the run matched."""
    shared = [k for k in sorted(replayed) if k in logged]
    parted = next((k for k in shared if not same_bits(replayed[k], logged[k])), None)
    if parted is None:
        return f"the replay matched the run bit for bit over steps {shared[0]}-{shared[-1]}" if shared else \
            "no logged step to check the replay against"
    a, b = replayed[parted], logged[parted]
    rel = abs(a - b) / abs(b) if math.isfinite(a) and math.isfinite(b) and b else math.nan
    how = f", {rel:.2g} relative" if math.isfinite(rel) else ""
    return f"the replay parted from the run at step {parted} (loss {a:.6g} vs {b:.6g}{how})"


def locate(spec: RunSpec, step: int, data_dir, data_root=None, init_dir=None, perturbation=None, fault=None,
           resume_from=None, ranks=ONE_PROCESS, logged: list[dict] | None = None, scaled: bool = False) -> origin.Origin:
    """Where the first non-finite value of a run whose loss or gradient norm was first NaN/inf at
    ``step`` came from (``origin``), found by a replay that is checked against the run. The run is
    trained again from its start (its checkpoint's step where it resumed), eagerly (a compiled
    run's ops replayed as aten ops), each step's loss compared bit for bit with the ``logged`` one
    and the state (loss, gradient norm, weights, optimizer state) checked for a NaN or inf after
    it, keeping a copy of the state before it. The step where the replay itself first meets a
    non-finite value (before ``step`` where a kernel broke while running, after it where the
    replay is not the run) is run again under ``origin.Finder``: from that copy (a kernel that
    stays broken), else, where it gives finite values there, from a fresh start as the replay
    trained it (a fault counted on the run's own objects; always so under FSDP2, whose gathered
    parameters a state copy does not restore). The origin says the op, phase and
    module, and how far the replay was from the run (``departure``). Call it within the run's
    attention context."""
    fault = fault or NO_FAULT
    eager = replace(spec, compile="none")

    def fresh() -> tuple[Setup, int]:
        determinism.apply(spec.seed, spec.device)
        s = setup(eager, torch.device(spec.device), data_dir, data_root, perturbation, init_dir, ranks=ranks)
        return s, 1 + (checkpoint.load(resume_from, spec.id, s.model, s.opt, s.sched, s.scaler) if resume_from else 0)

    def armed(s: Setup, k: int) -> origin.Origin:
        return origin.replay(s.ranks.inner(s.model), k, lambda phase: train_step(s, eager, k, fault, perturbation,
                                                                                keep_weights=False, phase=phase))

    s, first = fresh()
    losses = {int(r["step"]): float(r["loss"]) for r in logged or []}
    replayed: dict[int, float] = {}
    met = None
    for k in range(first, max(step, max(losses, default=step)) + 1):
        before = snapshot(s)
        out = train_step(s, eager, k, fault, perturbation, keep_weights=False)
        replayed[k] = float(out.loss)  # one host read a step: the replay is checked as it goes
        grads_bad = not scaled and not math.isfinite(float(out.grad_norm))
        if s.ranks.anywhere(not math.isfinite(replayed[k]) or grads_bad or origin.state_nonfinite(s)):
            met = k
            break
    how_far = departure(replayed, losses)
    if met is None:
        return s.ranks.origin(origin.Origin(step, "", "", "", "", "", reproduced=False, replay=how_far))
    found = None
    if s.ranks.restorable:
        restore(s, before)
        found = armed(s, met)
    if found is None or not found.reproduced:
        s, first = fresh()
        for k in range(first, met):
            train_step(s, eager, k, fault, perturbation, keep_weights=False)
        found = armed(s, met)
    if not found.reproduced:
        how_far += f"; it met a non-finite value at step {met}, but not when that step ran again"
    return s.ranks.origin(replace(found, replay=how_far))


def with_origin(spec: RunSpec, run_status, events: list[dict], step_log: StepLog, data_dir, data_root, init_dir,
                perturbation, fault, resume_from, ranks=ONE_PROCESS):
    """A non-finite run's status and events with where its first non-finite value came from
    (``locate``: one step replayed under a dispatch mode) in its reason and an event."""
    step = first_nonfinite_step(step_log.rows, step_log.scaled)
    if step is None:
        return run_status, events
    try:
        found = locate(spec, step, data_dir, data_root, init_dir, perturbation, fault, resume_from, ranks,
                       step_log.rows, step_log.scaled)
    except Exception as e:  # the run's row stands whatever the replay meets
        note = f"origin not located ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        return replace(run_status, status_reason=f"{run_status.status_reason}; {note}"), events
    return (replace(run_status, status_reason=f"{run_status.status_reason}; {found.line()}"),
            events + [found.event(spec.id)])


@dataclass
class StepOutput:
    """One optimizer step's values, still on the device."""

    x: tuple[torch.Tensor, ...]  # the batch's inputs, the model's positional arguments (for the probes)
    lr: float  # the LR this optimizer step used
    loss: torch.Tensor
    grad_norm: torch.Tensor  # global, before clipping, of the true (unscaled) gradients
    param_norms: torch.Tensor  # per parameter tensor
    before: list[torch.Tensor] | None  # weights before the step (read steps: the update ratio)
    grad_scale: torch.Tensor | None  # fp16: the loss scale this step used


def no_phase(name: str):
    """``train_step``'s default phase marker: nothing is recorded (``numerics`` records ops).
    It yields the phase's ``boundary(inputs, outputs)``: a compiled model's forward and backward
    are recorded by the tensors crossing them (here: nothing)."""
    return nullcontext(ignore_boundary)


def ignore_boundary(inputs, outputs) -> None:
    return None


def micro_batches(inputs: tuple[torch.Tensor, ...], y: torch.Tensor, parts: int, padded: bool = False):
    """The batch in ``parts`` micro-batches (``torch.tensor_split`` of every input and the
    targets: sizes differ by at most one), each with the weight that makes the sum of their mean
    losses the whole batch's mean loss: its share of the batch's targets, a number; with
    ``padded`` targets its share of the real ones, a device tensor (counting them on the host
    would synchronise). ``None`` for the whole batch: no multiplication, bits unchanged."""
    if parts == 1:
        return [(inputs, y, None)]
    if parts > len(y):
        raise UnsupportedImpl(f"accumulation {parts}: more micro-batches than the batch's {len(y)} samples")
    split = list(zip(*(torch.tensor_split(t, parts) for t in inputs)))
    real = (y != IGNORE).sum() if padded else None
    return [(xs, ys, (ys != IGNORE).sum() / real if padded else ys.numel() / y.numel())
            for xs, ys in zip(split, torch.tensor_split(y, parts))]


def clip_norm(clip: str) -> float | None:
    """The max norm of a RunSpec's ``clip`` ("none": no clipping)."""
    return None if clip == "none" else float(clip)


def train_step(s: Setup, spec: RunSpec, step: int, fault: Fault, perturbation: perturb.Perturbation | None,
               keep_weights: bool, phase=no_phase) -> StepOutput:
    """Data, forward and loss, backward (per micro-batch with ``spec.accumulation``), clipping
    (``clip_grad_norm_``, after fp16's ``unscale_``), optimizer step and schedule step of
    1-based ``step``, without a host synchronisation (fp16's GradScaler and clipping read
    nothing; the scaler's inf check is torch's, not ours). ``phase(name)`` wraps each phase (a
    context manager: ``numerics.trace`` records the ops of each)."""
    with phase("data"):
        x, y = data.train_batch(s.ds, spec.seed, step, s.batch_size, s.ds.train_x.device, spec.layout)
        x, y, share = s.ranks.rows(x, y)  # a rank's rows of the global batch, and its loss's weight
    lr_factor = fault.lr_factor(step)
    lr = s.opt.param_groups[0]["lr"] * lr_factor
    s.opt.zero_grad(set_to_none=True)
    scale, total = None, None
    for xs, ys, weight in micro_batches(x, y, spec.accumulation, padded=spec.layout != FULL):
        with phase("forward") as boundary, s.autocast:
            logits = s.model(*xs)
            boundary([*xs, *s.params], [logits])
        with phase("loss"), s.autocast:
            loss = fault.loss(step, logits_loss(logits.float(), s.ds.task, ys))
            if weight is not None:
                loss = loss * weight
            if share is not None:
                loss = loss * share
        with phase("backward") as boundary:
            if s.scaler is not None:
                scaled = s.scaler.scale(loss)
                if scale is None:
                    scale = s.scaler._scale.detach().clone()  # the scale this step uses (kept on the device)
                scaled.backward()
            else:
                with s.ranks.observe(step):
                    loss.backward()
            boundary([loss], [p.grad for p in s.params if p.grad is not None])
        total = loss.detach() if total is None else total + loss.detach()
    if s.scaler is not None:
        with phase("backward"):
            s.scaler.unscale_(s.opt)  # the norms below (and clipping) see the true gradients
    fault.grads(step, s.params)
    if perturbation is not None:
        perturbation.after_backward(s.params, spec.seed, step)
    grads = [p.grad if p.grad is not None else p.new_zeros(()) for p in s.params]
    param_norms = s.ranks.norms(grads)
    grad_norm = torch.linalg.vector_norm(param_norms)  # the global norm, before clipping
    max_norm = clip_norm(spec.clip)
    if max_norm is not None:
        with phase("clip"):
            torch.nn.utils.clip_grad_norm_(s.params, max_norm)
    before = [p.detach().clone() for p in s.params] if keep_weights else None
    with scaled_lr(s.opt, lr_factor) if lr_factor != 1.0 else nullcontext(), phase("optimizer"):
        if s.scaler is not None:
            s.scaler.step(s.opt)  # skipped when the gradients overflowed
            s.scaler.update()
        else:
            s.opt.step()
    with phase("schedule"):
        after_optimizer_step(s.sched, step, spec.steps)
    return StepOutput(x, lr, s.ranks.mean(total), grad_norm, param_norms, before, scale)


def result_row(spec: RunSpec, s: Setup, run_status, step_log: StepLog, thresholds: Thresholds) -> dict:
    """The runs.csv row: identity, recipe, the status's fields, the weights."""
    context = dict(context=s.ds.info.block_size) if s.ds.task == "lm" else {}  # the resolved context length
    recipe = dict(optimizer=s.opt_kw, schedule=s.sched_kw, batch_size=s.batch_size, model_size=spec.model_size, **context,
                  sync_every=SYNC_EVERY, thresholds=thresholds.__dict__)
    row = identity(spec)
    row.update(
        warmup_steps=s.sched_kw["warmup_steps"], lr=s.opt_kw["lr"], batch_size=s.batch_size,
        model_params=count_params(s.ranks.inner(s.model)), recipe=json.dumps(recipe, sort_keys=True),
        **{k: getattr(run_status, k) for k in STATUS_FIELDS},
        loss_floor=s.ds.loss_floor, max_grad_norm=step_log.max_grad_norm,
        weights_sha256=s.ranks.weights_sha256(s.model, weights_sha256),
        data_path=str(s.ds.path.resolve()), data_sha256=s.ds.sha256, data_name=s.ds.name,
        steps_run=len(step_log.rows), impl_resolved=s.opt_kw["impl"], init_sha256=s.init_sha256,
        seeded_init_sha256=s.seeded_init_sha256,
        skipped_steps=step_log.skipped_steps if s.scaler is not None else math.nan, **s.numerics,
    )
    return row
