"""Pairs are checked, not assumed: the seeds of one config on both sides of a comparison,
sorted into pairs (same seed, same data, same initial weights) and the rest; and torch's seeded
initialisation, judged apart from training."""

from __future__ import annotations

from dataclasses import dataclass

from diagnostics.judge.verdicts import INIT_CHANGED, INIT_SAME, is_skipped

# What pairs two runs besides the seed: the same data, the same initial weights (where recorded).
PAIRING = ("data_sha256", "init_sha256")


def seeded_init(row: dict) -> str:
    """The hash of the weights torch's seeded init gave a run: ``seeded_init_sha256``, else (a row
    from before that column, which trained from torch's own init) its ``init_sha256``; "" where
    neither was recorded (a skipped run)."""
    for col in ("seeded_init_sha256", "init_sha256"):
        v = row.get(col)
        if isinstance(v, str) and v:
            return v
    return ""


def init_verdict(b: list[dict], c: list[dict]) -> tuple[str, str]:
    """(``init_same`` / ``init_changed`` / "" where no seed on both sides recorded one, what
    changed) over the seeds present on both sides of a config (its runs.csv rows as dicts)."""
    bs = {int(r["seed"]): seeded_init(r) for r in b}
    cs = {int(r["seed"]): seeded_init(r) for r in c}
    seeds = sorted(s for s in set(bs) & set(cs) if bs[s] and cs[s])
    if not seeds:
        return "", ""
    changed = [s for s in seeds if bs[s] != cs[s]]
    if not changed:
        return INIT_SAME, ""
    s0 = changed[0]
    return INIT_CHANGED, (f"seeded init of seeds {','.join(map(str, changed))}: {cs[s0][:12]}, the baseline's "
                          f"{bs[s0][:12]}")



def unpaired_reason(b: dict, c: dict) -> str:
    """Why a baseline and a candidate run of one seed are not a pair ("" when they are)."""
    for col in PAIRING:
        x, y = b.get(col), c.get(col)
        if isinstance(x, str) and isinstance(y, str) and x and y and x != y:
            return f"{col} {y[:12]} differs from the baseline's {x[:12]}"
    return ""


@dataclass
class Pairing:
    """The seeds of one config on both sides, sorted into pairs and the rest."""

    pairs: dict  # seed -> (baseline row, candidate row): same data, same initial weights
    missing: list  # baseline seeds with no candidate partner
    new: list  # candidate seeds with no baseline partner
    skipped: list  # seeds skipped on either side
    unpaired: list  # "seed N: why" for seeds present on both sides but not a pair


def pair(b: list[dict], c: list[dict]) -> Pairing:
    """Pair the runs of one config by seed (module docs: pairs are checked): its runs.csv rows on
    each side, as dicts."""
    bs = {int(r["seed"]): r for r in b}
    cs = {int(r["seed"]): r for r in c}
    out = Pairing({}, sorted(set(bs) - set(cs)), sorted(set(cs) - set(bs)), [], [])
    for seed in sorted(set(bs) & set(cs)):
        rb, rc = bs[seed], cs[seed]
        if is_skipped(rb) or is_skipped(rc):
            out.skipped.append(seed)
        elif why := unpaired_reason(rb, rc):
            out.unpaired.append(f"seed {seed}: {why}")
            out.missing.append(seed)
            out.new.append(seed)
        else:
            out.pairs[seed] = (rb, rc)
    return out
