"""The command reference, generated from the CLI's parser and the registries (so it cannot drift
from ``--help``): ``reference_markdown()`` is the page docs/reference/commands.md, written by the
documentation build (docs/hooks.py) and never by hand. ``command_options()`` is what the docs test
checks every documented command line against."""

from __future__ import annotations

import argparse


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands, by name, in declaration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand of ``diagnostics`` by name, a nested one as "plot lr"."""
    from diagnostics.cli import build_parser

    out = {}
    for name, p in subparsers(build_parser()).items():
        out[name] = p
        out.update({f"{name} {sub}": q for sub, q in subparsers(p).items()})
    return out


def command_options() -> dict[str, set[str]]:
    """Every subcommand of ``diagnostics`` (nested ones as "plot lr") and the option strings it
    accepts."""
    return {name: set(p._option_string_actions) for name, p in commands().items()}


def _cell(text: str) -> str:
    """Text as one Markdown table cell (pipes and angle brackets escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _usage(name: str, p: argparse.ArgumentParser) -> str:
    positional = [a.metavar or a.dest.upper() for a in p._actions if not a.option_strings
                  and not isinstance(a, argparse._SubParsersAction)]
    return f"diagnostics {name} [options] " + " ".join(positional)


def _option_row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{f}`" for f in action.option_strings)
    value = "" if action.nargs == 0 else f" `{action.metavar or action.dest.upper()}`"
    choices = f" (one of: {', '.join(map(str, action.choices))})" if action.choices else ""
    choices = choices if not action.help or "(one of" not in action.help else ""
    helptext = (action.help or "") % {"default": action.default} if action.help and "%(default)" in action.help \
        else action.help or ""
    return f"| {flags}{value} | {_cell(helptext)}{_cell(choices)} |"


def reference_markdown() -> str:
    """The whole command reference: each subcommand's purpose, usage, positional arguments and
    options (with their help, which names each registry's entries), then the registries."""
    from diagnostics.cli import COMMANDS
    from diagnostics.grid.models import MODELS
    from diagnostics.grid.recipes import OPTIMIZERS, SCHEDULERS, WARMUPS
    from diagnostics.grid.spec import GRIDS

    parsers = commands()
    lines = ["# Command reference", "",
             "Generated from the command-line parser and the registries at each documentation build "
             "(`diagnostics/docs.py`); `diagnostics COMMAND --help` prints the same.", ""]
    sections = []  # each command, then its own subcommands ("plot lr") with their descriptions
    for name, helptext, *_ in COMMANDS:
        sections.append((name, helptext))
        sections += [(k, parsers[k].description or "") for k in parsers if k.startswith(name + " ")]
    for name, helptext in sections:
        p = parsers[name]
        lines += [f"## `diagnostics {name}`", "", _cell(helptext) + ".", "", "```", _usage(name, p), "```", ""]
        positional = [a for a in p._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
        if positional:
            lines += ["| argument | |", "|---|---|"]
            lines += [f"| `{a.metavar or a.dest}` | {_cell(a.help or '')} |" for a in positional]
            lines.append("")
        opts = [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        if opts:
            lines += ["| option | |", "|---|---|"] + [_option_row(a) for a in opts] + [""]
    lines += ["## Registries", "", "What the grid options accept (plugins add to them: how-to \"Your own recipes\").", "",
              "| axis | entries |", "|---|---|",
              f"| grids (`--grid`) | {', '.join(f'`{g}`' for g in GRIDS)} |",
              f"| models (`--models`) | {', '.join(f'`{m}`' for m in MODELS)} |",
              f"| optimizers (`--optimizers`) | {', '.join(f'`{o}`' for o in OPTIMIZERS)} |",
              f"| schedulers (`--schedulers`) | {', '.join(f'`{s}`' for s in SCHEDULERS)} |",
              f"| warmup (`--warmup`) | {', '.join(f'`{w}`' for w in WARMUPS)} |", ""]
    return "\n".join(lines)
