"""What a training script printed (a console log) as records: each line's ``name value`` pairs
(``iter 100: loss 4.2345``, ``| lm loss: 7.1E+00 | grad norm: 1.2 |``, ``loss=9.1,
num_updates=100``, ``step:  10  loss:  9.1``, colour codes dropped; a name of several words ending
in ``loss`` is the loss unless one of them is ``EVAL_WORDS``) or a printed dict (``{'loss': 2.3,
'learning_rate': 5e-05}``); the lines that log no loss (validation, progress) left out."""

from __future__ import annotations

import ast
import re

from diagnostics.detect.columns import LOSS_NAMES, NO_COLUMNS, STEP_NAMES, Columns, epoch_counter, norm

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# a name (letters and underscores, up to four words), then ":" or "=" or spaces, then a number
PAIR = re.compile(r"(?<![A-Za-z0-9_.])([A-Za-z][A-Za-z_]*(?: [A-Za-z][A-Za-z_]*){0,3})['\"]?\s*[:=]?\s*\[?"
                  r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf)(?![A-Za-z0-9_])", re.IGNORECASE)
DICT = re.compile(r"\{[^{}]*\}")
# words that make a printed loss an evaluation's, never the training loss
EVAL_WORDS = {"val", "valid", "validation", "eval", "evaluation", "test", "dev"}


def console_line(line: str) -> dict:
    """The values one printed line logs: a dict literal's numbers where the line prints one, else
    its ``name value`` pairs (the first value of a name wins)."""
    line = ANSI.sub("", line)
    for literal in DICT.findall(line):
        try:
            rec = ast.literal_eval(literal)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(rec, dict):
            return {norm(k): v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    rec: dict = {}
    for name, value in PAIR.findall(line):
        key = norm(name)
        rec.setdefault(key, value)
        words = key.split("_")
        if len(words) > 1 and words[-1] == "loss" and not EVAL_WORDS & set(words):  # "train epoch loss": a loss
            rec.setdefault("loss", value)
    return rec


def console_records(text: str, cols: Columns = NO_COLUMNS) -> list[dict]:
    """A console log's records (module docs): the lines that log its loss (``cols.loss``, else
    the first of ``LOSS_NAMES`` any line logs), each with a ``step``: the step counter most of
    them log (``cols.step``, else one of ``STEP_NAMES``; a loss line without it is left out), or
    where none logs one, the loss line's number (1, 2, ...; also its ``line_number``); [] when no
    line logs a loss."""
    records = [r for r in (console_line(line) for line in text.splitlines()) if r]
    names = [norm(cols.loss)] if cols.loss else LOSS_NAMES
    loss = next((n for n in names if any(n in r for r in records)), None)
    if loss is None:
        return []
    records = [r for r in records if loss in r]
    counters = [norm(cols.step)] if cols.step else STEP_NAMES
    counted = {n: sum(n in r for r in records) for n in counters}
    counter = max(counters, key=lambda n: (counted[n], -counters.index(n)))
    if not counted[counter]:
        counter = None if cols.step else epoch_counter(records, list(dict.fromkeys(k for r in records for k in r)), loss)
        if counter is None:
            return [dict(r, step=i, line_number=i) for i, r in enumerate(records, start=1)]
        return [dict(r, step=r[counter]) for r in records]
    return [dict(r, step=r[counter]) for r in records if counter in r]
