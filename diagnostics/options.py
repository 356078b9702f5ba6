"""Options declared once for both front ends (``diagnostics`` argparse and the pytest plugin).

Each ``Option`` is a name, a parser (None: an on/off flag), a default and a help text; ``add``
puts a table of them on an argparse parser or a pytest option group alike. Three tables:

- ``GRID_OPTIONS``: the grid's axes; help texts list each registry's names (models.MODELS,
  recipes.OPTIMIZERS, ...), so a new entry appears in both front ends' help by itself.
  ``grid_options`` turns them into a ``spec.GridOptions`` (validated by ``spec.resolve_grid``).
- ``SESSION_OPTIONS``: where data, reports and the baseline live, sharding, the seed checkpoint.
- ``VERDICT_OPTIONS``: which verdicts fail (``policy``).

``forward`` writes parsed options back as pytest arguments (the CLI runs the suites through
pytest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diagnostics import paths
from diagnostics.errors import UsageError
from diagnostics.grid.attention import ATTENTIONS
from diagnostics.grid.devices import DEVICE_TYPES
from diagnostics.grid.layout import LAYOUTS
from diagnostics.grid.models import MODELS, SIZES
from diagnostics.grid.parallel import PARALLELS
from diagnostics.grid.recipes import OPTIMIZERS, SCHEDULERS, WARMUPS
from diagnostics.grid.spec import COMPILE_BACKENDS, GRIDS, IMPLS, PRECISIONS, GridOptions
from diagnostics.judge.verdicts import MARGIN, Policy
from diagnostics.run.train import DEFAULT_DATA_DIR


@dataclass(frozen=True)
class Option:
    flag: str  # "--allow-missing"
    help_text: str | Callable[[], str]  # a callable: read when the help is built (registries grow with plugins)
    parse: Callable[[str], Any] | None = None  # None: an on/off switch
    default: Any = None
    name: str | None = None  # the parsed value's name, where the flag's would clash (pytest's -p is "plugins")

    @property
    def help(self) -> str:
        return self.help_text() if callable(self.help_text) else self.help_text

    @property
    def dest(self) -> str:
        return self.name or self.flag.lstrip("-").replace("-", "_")


def margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--margin {text!r} is not a number") from None
    if not 0 < value < 1:
        raise UsageError(f"--margin {value:g}: must be a fraction between 0 and 1 (e.g. {MARGIN})")
    return value


VERDICT_OPTIONS = (
    Option("--margin", f"practical margin, relative (default {MARGIN}): beyond noise and beyond it is regressed/"
                       "improved, within it changed", margin, MARGIN),
    Option("--allow-missing", "a baseline config or seed absent from the candidate (or with empty values) passes"),
    Option("--allow-no-baseline", "a run, config or seed without a baseline partner (none, other data or initial "
                                  "weights) passes (default: fails)"),
    Option("--allow-improved", "an improvement beyond the margin, or a better status, passes"),
    Option("--fail-on-change", "a change beyond numerical noise but within the margin fails too"),
)


DEFAULT_REPORT_DIR = str(paths.REPORT_DIR)


def names(registry) -> str:
    return ", ".join(registry)


GRID_OPTIONS = (
    Option("--grid", f"grid preset: {names(GRIDS)} (default: the suite's)", str),
    Option("--models", lambda: f"comma list of: {names(MODELS)}", str),
    Option("--optimizers", lambda: f"comma list of: {names(OPTIMIZERS)}", str),
    Option("--schedulers", lambda: f"comma list of: {names(SCHEDULERS)}", str),
    Option("--warmup", f"comma list of: {names(WARMUPS)}", str),
    Option("--devices", f"auto (default: every available device type) or a comma list of: {names(DEVICE_TYPES)}; "
                        "an absent device is an error", str, "auto"),
    Option("--precision", f"comma list of: {names(PRECISIONS)}", str),
    Option("--impls", f"optimizer implementations, comma list of: {names(IMPLS)} (default: the grid's; "
                      "default = torch's choice)", str),
    Option("--compile", f"torch.compile backends, comma list of: {names(COMPILE_BACKENDS)}", str),
    Option("--attention", f"attention kernels, comma list of: {names(ATTENTIONS)} (default: the grid's; default = "
                          "torch's choice)", str),
    Option("--layout", f"LM batch layouts, comma list of: {names(LAYOUTS)} (default: the grid's; full = unpadded "
                       "causal windows; right / left = padded sequences with a key-padding mask; packed = documents "
                       "with a block-diagonal causal mask; models without attention train full only)", str),
    Option("--context", "LM context lengths in tokens, comma list (e.g. 64,100,192) (default: the grid's; the "
                        "model preset's own)", str),
    Option("--clip", "gradient clipping, comma list of: none or a max norm (clip_grad_norm_ before each optimizer "
                     "step; under fp16 after the scaler's unscale_) (default: the grid's; none)", str),
    Option("--accumulation", "micro-batches per optimizer step, comma list (the batch split in as many parts, the "
                             "effective batch kept) (default: the grid's; 1)", str),
    Option("--parallel", f"how the model is parallelised, comma list of: {names(PARALLELS)} (default: the grid's; "
                         "none = one process; ddp and fsdp: world size 2 over gloo on the CPU, a rank per GPU over NCCL)",
           str),
    Option("--seeds", "comma list of integer seeds (default: the grid's; 0)", str),
    Option("--steps", "optimizer steps per run, at least 2 (default: the grid's)", str),
    Option("--size", f"model size preset: {names(SIZES)} (default: the grid's)", str),
    Option("--lr-scales", "comma list of LR multipliers (default: the grid's; 1)", str),
    Option("--plugins", "your own recipes: comma list of modules or .py files that register optimizers, schedulers or "
                        "models (diagnostics.register_*; entry points of the group diagnostics.plugins load by themselves)",
           str, name="recipe_plugins"),
)
NOT_AXES = ("devices", "recipe_plugins")  # grid options that are not a spec.GridOptions field as given

SESSION_OPTIONS = (
    Option("--shard", "i/N: run the i-th of N deterministic slices of the grid", str),
    Option("--data-root", "real data: a torchvision dataset or ImageFolder folder, or a UTF-8 text file for the LM",
           str),
    Option("--data-dir", f"where embedded data is written once (default: {DEFAULT_DATA_DIR})", str,
           str(DEFAULT_DATA_DIR)),
    Option("--report-dir", f"where the CSV reports go (default: {DEFAULT_REPORT_DIR})", str, DEFAULT_REPORT_DIR),
    Option("--baseline", "baseline runs.csv or its folder (default: reports/baselines/<grid>)", str),
    Option("--init-dir", "seed checkpoint folder: each (model, size, seed)'s initial weights are saved there once "
                         "and loaded by every later run (compare releases from the same weights)", str),
    Option("--update-baseline", "write this session's rows into the baseline"),
    Option("--force", "with --update-baseline: write even if runs errored or skipped"),
    Option("--world-size", "ranks of a ddp / fsdp run (default: 2 on the CPU, every GPU on CUDA); more than this "
                           "machine holds is an error", str),
    Option("--probes", "gpt: record the max attention logit and the output log-partition every 10 steps "
                       "(one extra forward pass each)"),
)

# ``diagnostics run`` and the suites (not calibrate, whose --resume reuses whole sessions)
RESUME_OPTIONS = (
    Option("--resume", "keep the finished runs of an interrupted session in --report-dir (same spec, code version "
                       "and environment), drop half-written ones, and train only what is missing"),
)


def add(target, options=VERDICT_OPTIONS) -> None:
    """Add options to an argparse parser or a pytest option group (both take add_argument-style
    keywords; pytest's is ``addoption``)."""
    add_one = getattr(target, "addoption", None) or target.add_argument
    for o in options:
        if o.parse is None:
            add_one(o.flag, action="store_true", default=False, dest=o.dest, help=o.help)
        else:
            add_one(o.flag, default=None, dest=o.dest, help=o.help)


def value(get: Callable[[str], Any], o: Option):
    """An option's parsed value from ``get(dest)``; raises ValueError with one line."""
    raw = get(o.dest)
    if o.parse is None:
        return bool(raw)
    return o.default if raw is None else o.parse(str(raw))


def policy(get: Callable[[str], Any]) -> tuple[Policy, float]:
    """(the verdict policy, the margin) from the parsed verdict options."""
    v = {o.dest: value(get, o) for o in VERDICT_OPTIONS}
    return Policy(v["allow_missing"], v["allow_no_baseline"], v["allow_improved"], v["fail_on_change"]), v["margin"]


def grid_options(get: Callable[[str], Any]) -> GridOptions:
    """The grid options of either front end as ``spec.GridOptions``, devices resolved
    (raises SpecError with one line for an unknown or absent device)."""
    from diagnostics.grid import devices

    raw = {o.dest: get(o.dest) for o in GRID_OPTIONS}
    return GridOptions(**{k: v for k, v in raw.items() if k not in NOT_AXES},
                       devices=devices.resolve(raw["devices"] or "auto"))


def forward(get: Callable[[str], Any], table=VERDICT_OPTIONS) -> list[str]:
    """Options of ``table`` as command-line arguments again (the CLI hands them to pytest)."""
    out = []
    for o in table:
        raw = get(o.dest)
        if o.parse is None and raw:
            out.append(o.flag)
        elif o.parse is not None and raw is not None:
            out += [o.flag, str(raw)]
    return out
