"""Real image datasets written to disk for tests: ImageFolder trees and MNIST's idx files."""

import struct
from pathlib import Path

import numpy as np

from diagnostics.grid.data import make_shapes


def write_imagefolder(root: Path, n: int = 400, classes: int = 4, split: bool = False, seed: int = 5) -> Path:
    """PNG files in class sub-folders (``train/`` and ``val/`` when ``split``)."""
    from PIL import Image

    x, y = make_shapes(seed, classes, 3, 16, n, noise=0.5, max_shift=1)
    for i, (img, label) in enumerate(zip(x, y)):
        sub = root / (("val" if i % 5 == 0 else "train") if split else "") / f"class_{label}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(sub / f"{i:04d}.png")
    return root


def _idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 6) -> Path:
    """MNIST in torchvision's raw layout (idx files) with learnable 28x28 class patterns."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x, y = make_shapes(seed, 10, 1, 28, n_train + n_test, noise=0.5, max_shift=1)
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        _idx(raw / f"{prefix}-images-idx3-ubyte", x[sl, 0])
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y[sl])
    return root
