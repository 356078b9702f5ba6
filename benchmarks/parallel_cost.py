"""What a ``ddp`` and an ``fsdp`` point cost against ``none``, wall time side by side in one run
(rounds alternate the three, so the machine's noise hits all alike).

    python benchmarks/parallel_cost.py [--steps 60] [--rounds 3] [--optimizers adamw,sgd]

Each point is timed as a session pays it: ``train.run`` called from this process, wall clock
around the call (the ranks' training, evaluation and reductions included). The rank group is
started once before the rounds, as a session starts it once per process, and its start-up is
printed on its own. The ratio is the median over rounds against ``none`` of the same config.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from diagnostics.grid.spec import RunSpec
from diagnostics.run import parallel

KINDS = ("none", "ddp", "fsdp")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--optimizers", default="adamw,sgd")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--data-dir", default="reports/data")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    group = parallel.group("cpu", 2)
    group.start()
    warm = RunSpec(model="gpt", optimizer="sgd", scheduler="cosine", warmup="linear", device="cpu", steps=2,
                   parallel="ddp")
    parallel.run(warm, data_dir=a.data_dir)  # the ranks import torch and join the group: paid once per session process
    print(f"rank group start-up (2 gloo ranks, torch imported, first point): {time.perf_counter() - t:.1f} s")
    print(f"{'config':<40} " + " ".join(f"{k:>8}" for k in KINDS) + "   ddp/none fsdp/none")
    for optimizer in a.optimizers.split(","):
        for precision in a.precisions.split(","):
            base = RunSpec(model="gpt", optimizer=optimizer, scheduler="cosine", warmup="linear", device="cpu",
                           steps=a.steps, precision=precision)
            seconds = {k: [] for k in KINDS}
            for _ in range(a.rounds):
                for k in KINDS:
                    t = time.perf_counter()
                    r = parallel.run(replace(base, parallel=k), data_dir=a.data_dir)
                    assert r.status != "error", r.row["status_reason"]
                    seconds[k].append(time.perf_counter() - t)
            med = {k: float(np.median(v)) for k, v in seconds.items()}
            print(f"{base.id:<40} " + " ".join(f"{med[k]:7.2f}s" for k in KINDS)
                  + f"   {med['ddp'] / med['none']:7.2f}x {med['fsdp'] / med['none']:8.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
