"""``run(spec) -> RunResult``: build data, model and recipe, train, judge, measure.

Per step the loop records the LR the optimizer step used, the loss, the global gradient norm
(before any clipping; there is none), per-layer gradient norms (for the Monitor) and the host
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
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from . import checkpoint, data, determinism, env, perturb
from .detect import SKIPPED, Monitor, Thresholds
from .faults import Fault
from .models import MODELS, block_size, build_model, count_params
from .recipes import build_optimizer, build_schedule
from .spec import RunSpec

SYNC_EVERY = 10  # steps between host reads of loss / grad norm (and RSS samples)
MB = 1024 * 1024
DEFAULT_DATA_DIR = Path("reports/data")


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


class Trace:
    """Per-step values kept on the device and read to the host in one synchronisation per
    ``read`` (every SYNC_EVERY steps): they become steps.csv rows and feed the Monitor."""

    def __init__(self, run_id: str, layer_names: list[str], monitor: Monitor):
        self.run_id, self.layer_names, self.monitor = run_id, layer_names, monitor
        self.pending: list[tuple[int, float, torch.Tensor, float]] = []
        self.rows: list[dict] = []
        self.max_grad_norm = 0.0

    def add(self, step: int, lr: float, loss: torch.Tensor, grad_norm: torch.Tensor, per_layer: torch.Tensor,
            elapsed: float) -> None:
        values = torch.cat((loss.detach().float().view(1), grad_norm.float().view(1), per_layer))
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
        for (step, lr, _, elapsed), (loss, grad_norm, *per_layer) in zip(self.pending, values):
            self.rows.append(dict(run_id=self.run_id, step=step, lr=lr, loss=loss, grad_norm=grad_norm,
                                  elapsed_s=elapsed, **(extra if step == last else {})))
            self.monitor.update(step, loss, grad_norm, lr, dict(zip(self.layer_names, per_layer)))
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


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def identity(spec: RunSpec) -> dict:
    return dict(run_id=spec.id, suite=spec.suite, model=spec.model, optimizer=spec.optimizer,
                scheduler=spec.scheduler, warmup=spec.warmup, device=spec.device, precision=spec.precision,
                seed=spec.seed, lr_scale=spec.lr_scale, steps=spec.steps, model_size=spec.size, grid=spec.grid)


def provenance(spec: RunSpec, worker: str) -> dict:
    row = env.versions()
    row.update(env.memory())
    row.update(device_name=env.device_name(spec.device), num_threads=torch.get_num_threads(), worker=worker)
    return row


@torch.no_grad()
def evaluate(model, ds: data.Dataset, device, autocast) -> tuple[float, float, str, int]:
    """(val_loss, val_metric, metric name, number of held-out examples) on the held-out split:
    accuracy for images, the loss itself for the LM."""
    model.eval()
    total_loss, total_correct, n = 0.0, 0, 0
    for x, y in data.val_batches(ds, device):
        with autocast:
            if ds.task == "lm":
                loss = model.loss((x, y))
            else:
                logits = model(x).float()
                loss = torch.nn.functional.cross_entropy(logits, y)
                total_correct += int((logits.argmax(1) == y).sum())
        total_loss += float(loss) * len(x)
        n += len(x)
    model.train()
    val_loss = total_loss / n
    return (val_loss, val_loss, "val_loss", n) if ds.task == "lm" else (val_loss, total_correct / n, "val_accuracy", n)


def run(spec: RunSpec, data_dir: Path = DEFAULT_DATA_DIR, data_root: str | None = None,
        thresholds: Thresholds | None = None, worker: str = "", fault: Fault | None = None,
        probes: bool = False, stop_after: int | None = None, checkpoint_path: Path | None = None,
        resume_from: Path | None = None, perturbation: str | None = None) -> RunResult:
    """Train one grid point. Never raises for a failing run: the row says ``error`` and why.
    ``fault`` injects a failure (tests and benchmarks of the detectors); ``probes`` adds the
    gpt's attention-logit and output log-partition probes on every read step (one extra forward
    pass each). ``stop_after=k`` with ``checkpoint_path`` trains steps 1..k and saves a
    checkpoint; ``resume_from`` loads one and trains the remaining steps (the trace then starts
    after the checkpoint's step). A resumed run's Monitor starts afresh. ``perturbation`` (a name
    in ``perturb.PERTURBATIONS``) changes only the run's rounding, for calibration."""
    started = utc_now()
    problem = env.torchvision_status()[1] if MODELS[spec.model].needs_torchvision else ""
    if problem:  # e.g. torch 2.13.0's CPU wheel: no torchvision loads beside it
        row = dict(identity(spec), status="error", status_reason=f"{SKIPPED}{problem}", started_at=started)
        row.update(provenance(spec, worker))
        return RunResult(row)
    try:
        with determinism.nondeterministic_ops() as nondeterministic:
            result = _train(spec, Path(data_dir), data_root, thresholds or Thresholds(), worker, fault, probes,
                            stop_after, checkpoint_path, resume_from, perturb.get(perturbation))
        if nondeterministic:
            result.row["deterministic"] = False
            result.row["status_reason"] += f"; nondeterministic ops: {', '.join(sorted(set(nondeterministic)))}"
    except Exception as e:  # the row must exist whatever broke
        result = RunResult(dict(identity(spec), status="error",
                                status_reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                                              f" [{traceback.extract_tb(e.__traceback__)[-1].name}]"))
        result.row.update(provenance(spec, worker))
    result.row["started_at"] = started
    return result


def _train(spec: RunSpec, data_dir: Path, data_root: str | None, thresholds: Thresholds, worker: str,
           fault: Fault | None, probes: bool, stop_after: int | None = None, checkpoint_path: Path | None = None,
           resume_from: Path | None = None, perturbation: perturb.Perturbation | None = None) -> RunResult:
    entry = MODELS[spec.model]
    device = torch.device(spec.device)
    deterministic = determinism.apply(spec.seed, spec.device)
    ds = data.load(entry.task, block_size(spec.model, spec.size), str(data_dir), data_root)
    model = build_model(spec.model, spec.size, ds.info).to(device)
    if perturbation is not None:
        perturbation.apply(model, device.type, spec.seed)
    opt, opt_kw = build_optimizer(spec.optimizer, model, spec.lr_scale)
    sched, sched_kw = build_schedule(opt, spec.scheduler, spec.warmup, spec.steps)
    batch_size = entry.batch_size[spec.size]
    params = [p for g in opt.param_groups for p in g["params"]]
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if spec.precision == "bf16"
                else nullcontext())
    monitor = Monitor(loss_floor=ds.loss_floor, thresholds=thresholds)
    proc = psutil.Process()
    peak_rss = proc.memory_info().rss
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    first_step = 1 + (checkpoint.load(resume_from, spec.id, model, opt, sched) if resume_from else 0)
    last_step = min(stop_after or spec.steps, spec.steps)

    layer_names, layer_assign = layers_of(model, params)
    layer_assign = layer_assign.to(device)
    trace = Trace(spec.id, layer_names, monitor)
    t0 = time.perf_counter()
    for step in range(first_step, last_step + 1):
        x, y = data.train_batch(ds, spec.seed, step, batch_size, device)
        lr_factor = fault.lr_factor(step) if fault else 1.0
        lr = opt.param_groups[0]["lr"] * lr_factor  # the LR this optimizer step uses
        with autocast:
            loss = model.loss((x, y))
        if fault:
            loss = fault.loss(step, loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if fault:
            fault.grads(step, params)
        if perturbation is not None:
            perturbation.after_backward(params, spec.seed, step)
        grads = [p.grad if p.grad is not None else p.new_zeros(()) for p in params]
        param_norms = torch.stack(torch._foreach_norm(grads))  # one fused kernel for every tensor
        grad_norm = torch.linalg.vector_norm(param_norms)  # the global norm, as clip_grad_norm_ computes it
        read = step % SYNC_EVERY == 0 or step == last_step  # values reach the host on these steps
        before = [p.detach().clone() for p in params] if read else None
        with scaled_lr(opt, lr_factor) if lr_factor != 1.0 else nullcontext():
            opt.step()
        if step < spec.steps:  # the schedule covers exactly spec.steps optimizer steps
            sched.step()
        trace.add(step, lr, loss, grad_norm, layer_norms(param_norms, layer_assign), time.perf_counter() - t0)
        if read:
            sampled = dict(update_ratio=update_ratio(params, before))
            if probes and hasattr(model, "probes"):
                with autocast:
                    sampled.update(model.probes(x))
            trace.read(sampled)
            peak_rss = max(peak_rss, proc.memory_info().rss)
            if monitor.diverged:
                break
    if on_cuda:
        torch.cuda.synchronize()
    runtime = time.perf_counter() - t0
    if stop_after is not None and checkpoint_path is not None and not monitor.diverged:
        checkpoint.save(checkpoint_path, spec.id, last_step, model, opt, sched)
    steps, steps_run = trace.rows, len(trace.rows)

    val_loss, val_metric, metric_name, val_samples = evaluate(model, ds, device, autocast)
    verdict = monitor.verdict()
    recipe = dict(optimizer=opt_kw, schedule=sched_kw, batch_size=batch_size, model_size=spec.size,
                  sync_every=SYNC_EVERY, thresholds=thresholds.__dict__)
    row = identity(spec)
    row.update(
        warmup_steps=sched_kw["warmup_steps"], lr=opt_kw["lr"], batch_size=batch_size,
        model_params=count_params(model), recipe=json.dumps(recipe, sort_keys=True),
        status=verdict.status, status_reason=verdict.status_reason, divergence_step=verdict.divergence_step,
        first_event_step=verdict.first_event_step, n_loss_spikes=verdict.n_loss_spikes,
        n_grad_spikes=verdict.n_grad_spikes, initial_loss=verdict.initial_loss, final_loss=verdict.final_loss,
        min_loss=verdict.min_loss, val_loss=val_loss, val_metric=val_metric, loss_floor=ds.loss_floor,
        max_grad_norm=trace.max_grad_norm, weights_sha256=weights_sha256(model),
        runtime_s=runtime, steps_per_s=steps_run / runtime, samples_per_s=steps_run * batch_size / runtime,
        peak_rss_mb=peak_rss / MB, peak_device_mem_mb=torch.cuda.max_memory_allocated() / MB if on_cuda else math.nan,
        data_path=str(ds.path.resolve()), data_sha256=ds.sha256, data_name=ds.name, deterministic=deterministic,
        steps_run=steps_run, val_metric_name=metric_name, val_samples=val_samples,
        perturbation=perturbation.name if perturbation is not None else "none",
    )
    row.update(provenance(spec, worker))
    events = [dict(run_id=spec.id, **e.__dict__) for e in monitor.events]
    return RunResult(row, steps, events)
