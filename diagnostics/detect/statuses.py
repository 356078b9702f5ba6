"""The status registry (what a run's curve can be called, better first), the events the rules
emit, and a run's status with its numbers (``RunStatus``: runs.csv's status columns)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Status:
    name: str
    colour: str  # plots and the report page
    converged: bool  # counts as converged (stability edge)
    meaning: str
    # decided by a threshold on a run that trained to the end (the fraction of the gap closed, the
    # spike rate): rounding alone can move a run across it (compare tests such flips against the
    # calibrated flip rate)
    by_threshold: bool = False


# better first: a status later in the table is worse (compare's status_changed direction)
STATUS_TABLE = (
    Status("converged", "#2e7d32", True, "it learned (beyond its noise and the stall margin), calmly; a plateau "
                                        "after learning is an event",
           by_threshold=True),
    Status("unstable", "#f9a825", True, "converged, with loss spike incidents at a rate above unstable_spike_rate",
           by_threshold=True),
    Status("stalled", "#6d4c41", False, "it did not learn: from its start to its end the loss fell by less than its "
                                        "noise or the stall margin",
           by_threshold=True),
    Status("diverged_nonfinite", "#c62828", False, "the loss or the gradient norm became NaN/inf"),
    Status("diverged_exploded", "#ad1457", False, "the loss blew up, or climbed back and stayed up"),
    Status("skipped", "#9e9e9e", False, "this stack cannot run the point: a release, device or package lacks what it "
                                        "needs (set by the trainer, with the reason)"),
    Status("error", "#424242", False, "the run raised (set by the trainer, with the reason)"),
)
STATUS = {s.name: s for s in STATUS_TABLE}
STATUSES = tuple(STATUS)
STATUS_RANK = {s: i for i, s in enumerate(STATUSES)}
STATUS_COLOUR = {s.name: s.colour for s in STATUS_TABLE}
CONVERGED = tuple(s.name for s in STATUS_TABLE if s.converged)
BY_THRESHOLD = frozenset(s.name for s in STATUS_TABLE if s.by_threshold)
# statuses of a run with no trained result to judge (its reason says why)
NO_RESULT = ("skipped", "error")
# ``nonfinite_origin``: where a trained run's first NaN/inf came from (``origin.py``: the run's
# step replayed, never a log's); written beside the ``nonfinite`` event of the same step
# ``first_nonfinite``: in a log that goes on after a divergence (``classify``), its first NaN/inf
EVENT_KINDS = ("nonfinite", "scale_collapse", "loss_vanished", "explosion", "relapse", "loss_spike", "grad_spike",
               "loss_shift", "grad_shift", "catastrophic_spike", "recovery", "plateau", "nonfinite_origin",
               "first_nonfinite")
# events that describe a healthy run's course, not a problem: not counted as its first event
COURSE_EVENTS = ("recovery", "plateau")



@dataclass(frozen=True)
class Event:
    step: int
    kind: str  # one of EVENT_KINDS
    signal: str  # loss, grad_norm, ...
    value: float
    threshold: float
    detail: str = ""


@dataclass(frozen=True)
class RunStatus:
    """A run's status with its numbers: these fields, in this order, are runs.csv's status columns
    (``STATUS_FIELDS``; ``report.OUTCOME`` starts with them)."""

    status: str
    status_reason: str
    divergence_step: float  # NaN when the run did not diverge
    first_event_step: float  # NaN when there was no event
    n_loss_spikes: int
    n_grad_spikes: int
    initial_loss: float
    final_loss: float
    min_loss: float


STATUS_FIELDS = [f.name for f in fields(RunStatus)]  # the one declaration: the dataclass above
STATUS_COLUMNS = ["run_id", *STATUS_FIELDS]  # diagnostics detect's runs.csv
