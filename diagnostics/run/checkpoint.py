"""Checkpoints for exact resume: model, optimizer, the whole scheduler chain (warmup included),
RNG states and the data position (the step: batches are functions of (seed, step)).

Written with ``torch.save``, read with ``torch.load(weights_only=True)`` into freshly built
objects; a file that is truncated or not such a checkpoint raises ``CheckpointError`` (one line).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from diagnostics.errors import DiagnosticsError

FORMAT = 1


class CheckpointError(DiagnosticsError):
    """An unreadable or foreign checkpoint; the message is one line."""


def _write(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then an atomic rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated zip, pickle garbage, disallowed globals
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a diagnostics checkpoint (format {FORMAT})")
    return state


def save(path: Path, run_id: str, step: int, model, optimizer, scheduler, scaler=None) -> None:
    """Everything ``load`` needs to continue after ``step`` (``scaler``: fp16's GradScaler)."""
    _write(path, {
        "format": FORMAT, "run_id": run_id, "step": step,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    })


@dataclass(frozen=True)
class SeedCheckpoints:
    """A folder of seed checkpoints (``{model}-{size}-s{seed}.pt``): each run of a (model, size,
    seed) loads its initial weights from there; with ``write``, the first run of one the folder
    lacks saves its own (a committed baseline's folder is read, not written, by a normal session)."""

    folder: Path
    write: bool = True

    def path(self, model: str, size: str, seed: int, context: int = 0) -> Path:
        """The file of a (model, size, seed), and its context length where not the preset's (a
        gpt of another context has another position table: other weights)."""
        return Path(self.folder) / f"{model}-{size}{f'-ctx{context}' if context else ''}-s{seed}.pt"


def seed_checkpoints(value) -> SeedCheckpoints | None:
    """A folder (writable) or SeedCheckpoints as given; None stays None."""
    if value is None or isinstance(value, SeedCheckpoints):
        return value
    return SeedCheckpoints(Path(value))


def save_weights(path: Path, model) -> None:
    """A seed checkpoint: the model's initial weights alone (``load_weights``)."""
    _write(path, {"format": FORMAT, "run_id": "", "step": 0, "model": model.state_dict()})


def load_weights(path: Path, model) -> None:
    """Load a seed checkpoint into a freshly built model of the same architecture."""
    state = _read(path)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: initial weights of another model ({str(e).splitlines()[0][:120]})") from None


def load(path: Path, run_id: str, model, optimizer, scheduler, scaler=None) -> int:
    """Restore the objects in place; returns the last completed step."""
    state = _read(path)
    if state["run_id"] != run_id:
        raise CheckpointError(f"{path}: checkpoint of {state['run_id']}, not of {run_id}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])
