"""How far a distributed run's first gradient lies from one process's: the rounding of sums in
another order, measured (``judge.parallel.FIRST_GRAD_RTOL`` rests on it).

At step 1 both runs hold the same weights and the same global batch, so the gradient norm can
differ only by the order of sums (the ranks' shard gradients averaged, or reduced in the policy's
dtype). For each distributed value, precision, optimizer, layout and seed this trains 2 steps
distributed and its one-process reference (``run.parallel.reference``) and prints the relative
difference of the step-1 gradient norms, and, for scale, the same difference between two
single-process runs whose sums run in another order (the ``threads2`` perturbation).

    python benchmarks/parallel_noise.py --seeds 0,1,2,3 --out docs/measured/parallel-noise.csv
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd

from diagnostics.grid.spec import RunSpec
from diagnostics.run import parallel, train


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--data-dir", default="reports/data")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = []
    points = [(par, prec) for par in ("ddp", "fsdp") for prec in ("fp32", "bf16")]
    for seed in (int(s) for s in a.seeds.split(",")):
        for optimizer in ("adamw", "sgd"):
            for layout in ("full", "right", "packed"):
                base = RunSpec(model="gpt", optimizer=optimizer, scheduler="cosine", warmup="linear", device="cpu",
                               steps=a.steps, seed=seed, layout=layout)
                for par, prec in points:
                    spec = replace(base, parallel=par, precision=prec)
                    t = time.perf_counter()
                    run = parallel.run(spec, data_dir=a.data_dir)
                    ref = parallel.reference(spec, data_dir=a.data_dir)
                    other = train.run(parallel.one_process_of(spec), a.data_dir, perturbation="threads2") \
                        if not parallel.policy_point(spec) else None
                    g, r = run.steps[0]["grad_norm"], ref.steps[0]["grad_norm"]
                    rows.append(dict(parallel=par, precision=prec, optimizer=optimizer, layout=layout, seed=seed,
                                     grad_norm=g, reference_grad_norm=r, rel_diff=rel(g, r),
                                     threads2_rel_diff=rel(other.steps[0]["grad_norm"], r) if other else float("nan"),
                                     seconds=time.perf_counter() - t))
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    if a.out:
        table.to_csv(a.out, index=False)
    print(table.groupby(["parallel", "precision"])[["rel_diff", "threads2_rel_diff"]].max().to_string())


if __name__ == "__main__":
    main()
