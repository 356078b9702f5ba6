"""What each batch layout costs per training step against ``full``, at each context length, side by
side in one run (machines here are noisy: rounds alternate every layout, so noise hits all alike).

    python benchmarks/layout_cost.py [--contexts 64,100,192] [--steps 40] [--rounds 3] [--precision fp32]

Each point is ``train.run``'s own loop time (``runtime_s``: batch, forward, loss, backward,
optimizer and schedule, with the suite's instrumentation) of gpt (tiny) x AdamW x cosine, one
intra-op thread, divided by its steps; the ratio is its median over rounds against ``full`` at the
same context length. A padded batch trains on fewer real tokens than a full one (about 56%), so
the table also gives the cost per real token.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from diagnostics.grid import data
from diagnostics.grid.layout import IGNORE, LAYOUTS
from diagnostics.grid.spec import RunSpec
from diagnostics.run import train


def real_fraction(layout: str, context: int, data_dir) -> float:
    """The share of real (scored) targets in the first 10 training batches of a layout."""
    ds = data.for_model("gpt", "tiny", data_dir, None, context)
    real = total = 0
    for step in range(1, 11):
        _, y = data.train_batch(ds, 0, step, 16, torch.device("cpu"), layout)
        real, total = real + int((y != IGNORE).sum()), total + y.numel()
    return real / total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="64,100,192")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--data-dir", default=str(train.DEFAULT_DATA_DIR))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    contexts = [int(c) for c in args.contexts.split(",")]
    per_step: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for context in contexts:
            for layout in LAYOUTS:
                spec = RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu",
                               steps=args.steps, precision=args.precision, layout=layout,
                               context=0 if context == 64 else context)
                r = train.run(spec, data_dir=args.data_dir)
                if r.status in ("error", "skipped"):
                    print(f"{spec.id}: {r.status} ({r.row['status_reason']})", file=sys.stderr)
                    return 1
                per_step.setdefault((context, layout), []).append(r.row["runtime_s"] / r.row["steps_run"])
    print(f"torch {torch.__version__}, {args.precision}, {args.steps} steps x {args.rounds} rounds, 1 thread")
    print("| context | layout | ms / step | x full | real tokens | x full per real token |")
    print("|---|---|---|---|---|---|")
    for context in contexts:
        base = float(np.median(per_step[context, "full"]))
        for layout in LAYOUTS:
            ms = float(np.median(per_step[context, layout]))
            frac = real_fraction(layout, context, args.data_dir)
            print(f"| {context} | {layout} | {1000 * ms:.1f} | {ms / base:.2f} | {frac:.0%} | {ms / base / frac:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
