"""Cost of the suite's instrumentation (per-step grad norms, per-layer norms, batched host reads,
the update-to-weight ratio every 10th step, the streaming Monitor, steps records) against a bare
training loop, side by side in one run (probes off, as in the grids).

    python benchmarks/monitor_overhead.py [--model gpt] [--steps 200] [--rounds 5]

Both loops train the same default CPU recipe (same data, model, optimizer and schedule, one
intra-op thread); rounds alternate bare / instrumented so machine noise hits both alike. The
instrumented time is ``train.run``'s own loop time (``runtime_s``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diagnostics.grid import data
from diagnostics.grid.models import MODELS, build_model, task_loss
from diagnostics.grid.recipes import build_optimizer, build_schedule
from diagnostics.grid.spec import RunSpec
from diagnostics.run import determinism, train


def bare_loop(spec: RunSpec) -> float:
    """Seconds for spec.steps steps of a plain loop: batch, forward, backward, step, schedule."""
    determinism.apply(spec.seed, "cpu")
    entry = MODELS[spec.model]
    ds = data.for_model(spec.model, spec.model_size, train.DEFAULT_DATA_DIR)
    model = build_model(spec.model, spec.model_size, ds.info)
    opt, _ = build_optimizer(spec.optimizer, model)
    sched, _ = build_schedule(opt, spec.scheduler, spec.warmup, spec.steps)
    bs = entry.batch_size[spec.model_size]
    t0 = time.perf_counter()
    for step in range(1, spec.steps + 1):
        batch = data.train_batch(ds, spec.seed, step, bs, torch.device("cpu"))
        loss = task_loss(model, entry.task, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step < spec.steps:
            sched.step()
    float(loss.detach())
    return time.perf_counter() - t0


def instrumentation_alone(spec: RunSpec, repeats: int = 2000) -> float:
    """Seconds per step of the instrumentation by itself, on real gradients of the model: the
    same calls train.run makes per step, and the Monitor's per-step work at each read."""
    from diagnostics.detect import Monitor

    entry = MODELS[spec.model]
    ds = data.for_model(spec.model, spec.model_size, train.DEFAULT_DATA_DIR)
    model = build_model(spec.model, spec.model_size, ds.info)
    opt, _ = build_optimizer(spec.optimizer, model)
    params = [p for g in opt.param_groups for p in g["params"]]
    task_loss(model, entry.task, data.train_batch(ds, 0, 1, entry.batch_size[spec.model_size], torch.device("cpu"))).backward()
    names, assign = train.layers_of(model, params)
    step_log = train.StepLog(spec.id, names, Monitor(loss_floor=ds.loss_floor))
    loss = torch.tensor(2.0)
    t0 = time.perf_counter()
    for step in range(1, repeats + 1):
        grads = [p.grad if p.grad is not None else p.new_zeros(()) for p in params]
        norms = torch.stack(torch._foreach_norm(grads))
        gn = torch.linalg.vector_norm(norms)
        step_log.add(step, 1e-3, loss + 1e-3 * (step % 7), gn, train.layer_norms(norms, assign), 0.0)
        if step % train.SYNC_EVERY == 0:
            before = [p.detach().clone() for p in params]
            step_log.read(dict(update_ratio=train.update_ratio(params, before)))
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    spec = RunSpec(model=args.model, optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", steps=args.steps)
    bare, full = [], []
    train.run(spec)  # warm-up: data files, allocator, lazy imports
    for _ in range(args.rounds):
        bare.append(bare_loop(spec) / args.steps)
        full.append(train.run(spec).row["runtime_s"] / args.steps)
    b, f = statistics.median(bare), statistics.median(full)
    alone = instrumentation_alone(spec)
    print(f"{spec.id}, {args.steps} steps x {args.rounds} rounds (median per step)")
    print(f"bare loop          {1e3 * b:7.3f} ms/step")
    print(f"instrumented loop  {1e3 * f:7.3f} ms/step")
    print(f"overhead           {100 * (f - b) / b:+7.2f} %  (per round: "
          + ", ".join(f"{100 * (y - x) / x:+.1f}%" for x, y in zip(bare, full)) + ")")
    print(f"instrumentation alone {1e6 * alone:7.1f} us/step = {100 * alone / b:.2f} % of a bare step")


if __name__ == "__main__":
    main()
