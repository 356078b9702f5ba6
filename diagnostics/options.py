"""Options declared once for both front ends (``diagnostics`` argparse and the pytest plugin).

Each ``Option`` is a name, a parser (None: an on/off flag), a default and a help text; ``add``
puts a table of them on an argparse parser or a pytest option group alike, and ``policy``
builds the verdict policy from whichever front end parsed them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .compare import MARGIN, Policy


@dataclass(frozen=True)
class Option:
    flag: str  # "--allow-missing"
    help: str
    parse: Callable[[str], Any] | None = None  # None: an on/off switch
    default: Any = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--margin {text!r} is not a number") from None
    if not 0 < value < 1:
        raise ValueError(f"--margin {value:g}: must be a fraction between 0 and 1 (e.g. {MARGIN})")
    return value


VERDICT_OPTIONS = (
    Option("--margin", f"practical margin, relative (default {MARGIN}): beyond noise and beyond it is regressed/"
                       "improved, within it changed", margin, MARGIN),
    Option("--allow-missing", "a baseline config absent from the candidate passes"),
    Option("--allow-no-baseline", "a run or config without a baseline passes (default: fails)"),
    Option("--allow-improved", "an improvement beyond the margin, or a better status, passes"),
    Option("--fail-on-change", "a change beyond numerical noise but within the margin fails too"),
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


def forward(get: Callable[[str], Any]) -> list[str]:
    """The verdict options as command-line arguments again (the CLI hands them to pytest)."""
    out = []
    for o in VERDICT_OPTIONS:
        raw = get(o.dest)
        if o.parse is None and raw:
            out.append(o.flag)
        elif o.parse is not None and raw is not None:
            out += [o.flag, str(raw)]
    return out
