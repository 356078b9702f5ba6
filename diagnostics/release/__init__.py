"""Cross-release questions, one command each: did torch X change convergence (``release BASE
CANDIDATE``), and at which release did each config's verdict change (``bisect V1 ... Vn``).

Each torch version gets its own virtual environment under ``envs_dir`` (built once by pip, then
reused): that torch, the matching torchvision where one installs beside it (else none: the
ResNet-8 and gpt need none; resnet18 and ViT are then skips with the reason), and this package,
editable. Each version trains the same grid (default: the ``release`` preset) in its own
environment, from the same initial weights (``--init-dir``: the first version's seed checkpoint),
into ``out/torch-VERSION``; ``diagnostics compare`` judges them with the verdicts of the suite.

environments.py builds and bounds the environments, sessions.py trains and traces each version,
questions.py judges them (release, bisect, changelog); numerics.py, explain.py and reproducer.py
say why bits changed.
"""

from diagnostics.release.environments import (
                                              ENV_BYTES,
                                              ERA_NUMPY,
                                              READY,
                                              TORCHVISION,
                                              Candidate,
                                              Environments,
                                              ReleaseError,
                                              candidate,
                                              check_version,
)
from diagnostics.release.questions import (
                                              CHANGELOG_COLUMNS,
                                              Noise,
                                              bisect,
                                              changelog,
                                              committed_noise,
                                              explained,
                                              failing,
                                              judged,
                                              noise_for,
)
from diagnostics.release.sessions import COMPLETE, KeptSessions, Sessions

__all__ = ["CHANGELOG_COLUMNS", "COMPLETE", "ENV_BYTES", "ERA_NUMPY", "READY", "TORCHVISION", "Candidate",
           "Environments", "KeptSessions", "Noise", "ReleaseError", "Sessions", "bisect", "candidate", "changelog",
           "check_version", "committed_noise", "explained", "failing", "judged", "noise_for"]
