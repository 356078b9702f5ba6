"""Divergence, spike and stall detection: one set of rules, used two ways.

``Monitor`` is fed one logged point at a time, inside the training loop (``update``, which also
decides early abort through ``diverged``) or offline from any log (``classify``). A point has a
step and a loss; the gradient norm and the LR are optional (None: not logged), and the rules use
what is there. Every window and patience counts *logged points*, so a log written every N steps,
or irregularly, is judged like a dense one.

The rules run in the order of ``rule_chain``, each a small object that owns its state (a rule
that reads another's, e.g. the relapse rule the LR window, gets it in its constructor), with its
thresholds documented in ``Thresholds``; a rule that ends the run (divergence) stops the rest for
that point:

0. ``ScaleRule``: with fp16 loss scaling (a logged ``grad_scale``), a non-finite gradient norm
   is a step the scaler skipped, not a divergence; a scale below ``scale_collapse`` is a
   ``scale_collapse`` event and ``diverged_nonfinite`` (the gradients overflow at true size).
1. ``NonfiniteRule``: a logged NaN/inf loss or gradient norm -> ``diverged_nonfinite`` there (and,
   offline, ``Monitor.vanish``: a loss blank to the end of a log that goes on, the same).
2. ``LrRule``: an LR rise of the schedule raises the spike thresholds for a while (an LR
   bomb, far above any LR the schedule has used, does not); a NaN LR is ignored.
3. ``CatastrophicRule``: Megatron-LM's loss >= 10x the largest of the first 100 values (an event).
4. ``ExplosionRule``: the loss stays above 3x its initial level -> ``diverged_exploded``.
5. ``RelapseRule``: the loss climbs back to a multiple of its best and stays -> ``diverged_exploded``.
6. ``SpikesRule``: spike incidents on the loss and gradient norm: beyond robust sigmas of the
   residuals, or far above the recent range (``Thresholds.spike_range_factor``).
7. ``RecoveryRule``: a loss spike followed by a return to the pre-spike level.

A divergence is located where it starts (``Monitor.onset``): the first point of the final climb
above half way from the best level the run reached to the level that triggered the rule.

Statuses live in ``STATUS_TABLE`` (name, rank, colour, whether it counts as converged); plots,
the stability table and the report page read them from there. ``Monitor.status`` decides
``stalled`` (the run did not learn over its whole curve: ``Monitor.why_stalled``; a plateau after
learning is a ``plateau`` event, ``Monitor.plateau``), ``unstable`` (converged, with spike incidents
at more than 1 per 100 points and at least 3) and ``converged``; ``skipped`` and ``error`` are the
trainer's.
"""

from diagnostics.detect.monitor import Monitor, Point, classify, classify_table
from diagnostics.detect.robust import is_finite
from diagnostics.detect.statuses import (
                                         BY_THRESHOLD,
                                         CONVERGED,
                                         COURSE_EVENTS,
                                         EVENT_KINDS,
                                         NO_RESULT,
                                         STATUS,
                                         STATUS_COLOUR,
                                         STATUS_COLUMNS,
                                         STATUS_FIELDS,
                                         STATUS_RANK,
                                         STATUS_TABLE,
                                         STATUSES,
                                         Event,
                                         RunStatus,
                                         Status,
)
from diagnostics.detect.thresholds import Thresholds

__all__ = ["BY_THRESHOLD", "CONVERGED", "COURSE_EVENTS", "EVENT_KINDS", "NO_RESULT", "STATUS", "STATUS_COLOUR",
           "STATUS_COLUMNS", "STATUS_FIELDS", "STATUS_RANK", "STATUS_TABLE", "STATUSES", "Event", "Monitor", "Point",
           "RunStatus", "Status", "Thresholds", "classify", "classify_table", "is_finite"]
