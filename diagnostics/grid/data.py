"""Training data: embedded defaults that need no download, and real datasets on disk.

Embedded data is generated deterministically from ``DATA_SEED`` (independent of the run's seed,
so seeds vary initialisation and data order, never the data), written once into the data
directory as one ``.npy``-stream file, and identified by that file's SHA-256:

- ``markov``: tokens from a seeded order-1 Markov source over 32 symbols. Its entropy rate is
  computed exactly and reported as ``loss_floor``: the lowest mean cross-entropy (nats/token)
  any model can reach, so convergence is judged in absolute nats.
- ``shapes``: a learnable class-conditional image set: 10 classes, each a smooth random
  3x16x16 prototype, seen shifted, rescaled and under heavy noise; a held-out split.

Real data (``data_root``): torchvision ``CIFAR10`` / ``MNIST`` / ``FashionMNIST`` already on
disk (``download=False``), an ``ImageFolder`` tree, or a UTF-8 text file for the LM at
character level. Problems raise ``DataError`` with a one-line message.

Batches are stateless functions of ``(seed, step)``: the data order of step k does not depend
on what ran before, so resuming at step k needs only k. An LM batch is laid out as its run's
``layout`` says (``layout.py``: full windows, right- or left-padded sequences, packed
documents); the lengths of a padded or packed batch are drawn from a generator of
``(seed, step)`` too. A batch is ``(inputs, targets)``: ``inputs`` the tuple of the model's
positional arguments (the tokens, then the layout's segments where it has some; the images).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diagnostics.errors import DiagnosticsError
from diagnostics.grid import layout as layouts
from diagnostics.grid.models import MODELS, DataInfo

DATA_SEED = 1234  # fixed: the embedded data is the same for every run and machine
MARKOV = dict(vocab=32, order=1, alpha=0.1, train_tokens=200_000, val_tokens=20_000)
SHAPES = dict(classes=10, channels=3, size=16, train=5000, val=1000, noise=2.0, max_shift=3)
IMAGE_SIZE_REAL = 32  # ImageFolder images are resized to this square side
VAL_FRACTION = 0.1  # held-out share where a source has no split of its own
LM_EVAL_WINDOWS = 64  # held-out windows scored at the end of an LM run
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


class DataError(DiagnosticsError):
    """Data that is missing, unreadable or malformed; the message is one line for the user."""


# --------------------------------------------------------------------------------------------
# pure math of the Markov source
# --------------------------------------------------------------------------------------------


def markov_transitions(vocab: int, order: int, alpha: float, seed: int) -> np.ndarray:
    """Row-stochastic matrix of shape (vocab**order, vocab): next-token distribution per context,
    each row drawn from a symmetric Dirichlet(alpha) (small alpha: few likely successors)."""
    return np.random.default_rng(seed).dirichlet([alpha] * vocab, size=vocab**order)


def context_chain(transitions: np.ndarray, vocab: int) -> np.ndarray:
    """Transition matrix over contexts: context c = (a, b) moves to (b, x) with P[c, x]."""
    n_ctx = transitions.shape[0]
    chain = np.zeros((n_ctx, n_ctx))
    for c in range(n_ctx):
        shifted = (c * vocab) % n_ctx
        chain[c, shifted : shifted + vocab] = transitions[c]
    return chain


def stationary_distribution(chain: np.ndarray, iters: int = 10_000, tol: float = 1e-14) -> np.ndarray:
    """Stationary distribution of an ergodic chain by power iteration."""
    pi = np.full(chain.shape[0], 1.0 / chain.shape[0])
    for _ in range(iters):
        nxt = pi @ chain
        if np.abs(nxt - pi).sum() < tol:
            return nxt
        pi = nxt
    return pi


def entropy_rate(transitions: np.ndarray, vocab: int) -> float:
    """Entropy rate of the source in nats/token: sum over contexts of pi(c) * H(P[c])."""
    pi = stationary_distribution(context_chain(transitions, vocab))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(transitions > 0, transitions * np.log(transitions), 0.0).sum(axis=1)
    return float(pi @ h)


def sample_markov(transitions: np.ndarray, vocab: int, order: int, n: int, seed: int) -> np.ndarray:
    """n tokens from the source, started from a uniformly drawn context."""
    rng = np.random.default_rng(seed)
    cdfs = [list(np.cumsum(row)) for row in transitions]
    u = rng.random(n)
    n_ctx = vocab**order
    ctx = int(rng.integers(n_ctx))
    out = np.empty(n, dtype=np.uint8)
    for i in range(n):
        tok = min(bisect.bisect_right(cdfs[ctx], u[i]), vocab - 1)
        out[i] = tok
        ctx = (ctx * vocab + tok) % n_ctx
    return out


def make_shapes(seed: int, classes: int, channels: int, size: int, n: int, noise: float, max_shift: int):
    """Images (uint8, N x C x H x W) and labels: class prototype (4x4 noise upsampled to a smooth
    pattern), rolled by up to ``max_shift`` pixels, contrast-scaled, plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(classes, channels, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    protos = (protos - protos.mean()) / protos.std()
    sample_gen = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, classes, (n,), generator=sample_gen)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=sample_gen)
    scale = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=sample_gen)
    x = protos[labels] * scale
    x = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2)) for img, (dy, dx) in zip(x, shifts)])
    x = x + noise * torch.randn(x.shape, generator=sample_gen)
    u8 = ((x.clamp(-4, 4) + 4) * (255 / 8)).round().to(torch.uint8)
    return u8.numpy(), labels.numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def params_digest(params: dict) -> str:
    """Short hash of every generator parameter and DATA_SEED: part of the file name, so a file
    made with other parameters is never mistaken for this data."""
    text = json.dumps(dict(params, data_seed=DATA_SEED, format=1), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    """Write arrays as consecutive .npy records, atomically (safe when workers race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        for a in arrays:
            np.save(f, a, allow_pickle=False)
    os.replace(tmp, path)


def read_arrays(path: Path, count: int) -> list[np.ndarray]:
    try:
        with open(path, "rb") as f:
            return [np.load(f, allow_pickle=False) for _ in range(count)]
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read data file {path}: {e}") from None


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Train/held-out tensors (on CPU) plus what the report says about them."""

    task: str  # "lm" or "image"
    name: str  # markov, shapes, cifar10, mnist, fashionmnist, imagefolder, text
    path: Path  # the file (or folder) trained on, as recorded in the report
    sha256: str  # of the file; of the sorted file list and contents for a folder
    info: DataInfo
    train_x: torch.Tensor  # lm: 1-D token ids; image: uint8 N x C x H x W
    val_x: torch.Tensor
    train_y: torch.Tensor | None = None  # image labels
    val_y: torch.Tensor | None = None
    loss_floor: float = float("nan")  # lowest reachable loss where known (nats)
    mean: torch.Tensor | None = field(default=None, repr=False)  # image normalisation, per channel
    std: torch.Tensor | None = field(default=None, repr=False)


def _image_dataset(name, path, sha, x_tr, y_tr, x_va, y_va) -> Dataset:
    x_tr, x_va = torch.as_tensor(x_tr), torch.as_tensor(x_va)
    if x_tr.ndim == 3:  # grayscale N x H x W
        x_tr, x_va = x_tr[:, None], x_va[:, None]
    y_tr, y_va = torch.as_tensor(np.asarray(y_tr), dtype=torch.long), torch.as_tensor(np.asarray(y_va), dtype=torch.long)
    f = x_tr.float() / 255
    mean, std = f.mean(dim=(0, 2, 3)), f.std(dim=(0, 2, 3)).clamp_min(1e-3)
    info = DataInfo(num_classes=int(max(y_tr.max(), y_va.max())) + 1, channels=x_tr.shape[1], image_size=x_tr.shape[-1])
    return Dataset("image", name, Path(path), sha, info, x_tr, x_va, y_tr, y_va, mean=mean, std=std)


def markov_dataset(data_dir: Path, block: int) -> Dataset:
    m = MARKOV
    path = Path(data_dir) / f"markov-v{m['vocab']}-o{m['order']}-{params_digest(m)}.npy"
    if not path.exists():
        P = markov_transitions(m["vocab"], m["order"], m["alpha"], DATA_SEED)
        toks = sample_markov(P, m["vocab"], m["order"], m["train_tokens"] + m["val_tokens"], DATA_SEED + 1)
        write_arrays(path, [toks, P])
    toks, P = read_arrays(path, 2)
    if toks.shape != (m["train_tokens"] + m["val_tokens"],) or P.shape != (m["vocab"] ** m["order"], m["vocab"]):
        raise DataError(f"data file {path} does not hold the expected Markov data; delete it to regenerate")
    t = torch.as_tensor(toks.astype(np.int64))
    info = DataInfo(vocab_size=m["vocab"], block_size=block)
    ds = Dataset("lm", "markov", path, sha256_file(path), info, t[: m["train_tokens"]], t[m["train_tokens"] :])
    ds.loss_floor = entropy_rate(P, m["vocab"])
    return ds


def shapes_dataset(data_dir: Path) -> Dataset:
    s = SHAPES
    path = Path(data_dir) / f"shapes-c{s['classes']}-{s['size']}px-{params_digest(s)}.npy"
    if not path.exists():
        x, y = make_shapes(DATA_SEED, s["classes"], s["channels"], s["size"], s["train"] + s["val"], s["noise"], s["max_shift"])
        write_arrays(path, [x, y])
    x, y = read_arrays(path, 2)
    n = s["train"]
    if x.shape[0] != n + s["val"] or y.shape[0] != x.shape[0]:
        raise DataError(f"data file {path} does not hold the expected image data; delete it to regenerate")
    return _image_dataset("shapes", path, sha256_file(path), x[:n], y[:n], x[n:], y[n:])


def text_dataset(path: Path, block: int) -> Dataset:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if len(text) < 20 * (block + 1):
        raise DataError(f"{path} has {len(text)} characters; the LM needs at least {20 * (block + 1)}")
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lut[c] for c in text], dtype=torch.long)
    n_val = max(block + 1, int(len(ids) * VAL_FRACTION))
    info = DataInfo(vocab_size=len(chars), block_size=block)
    return Dataset("lm", "text", path, sha256_file(path), info, ids[:-n_val], ids[-n_val:])


def _folder_sha(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _load_image_files(files: list[Path], size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {f}: {e}") from None
    return out


def imagefolder_dataset(root: Path) -> Dataset:
    """Class sub-folders of images; ``train/`` and ``val/`` are the splits when both exist,
    else a seeded held-out split of ``VAL_FRACTION``. Images are resized to IMAGE_SIZE_REAL."""
    from torchvision.datasets.folder import find_classes

    def scan(d: Path):
        try:
            classes, to_idx = find_classes(str(d))
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"{d} is not an image folder (class sub-folders of images): {e}") from None
        files = sorted(f for c in classes for f in (d / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        labels = [to_idx[f.relative_to(d).parts[0]] for f in files]
        if not files:
            raise DataError(f"{d} has class folders but no images ({', '.join(IMAGE_EXTENSIONS)})")
        return classes, files, labels

    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, f_tr, y_tr = scan(root / "train")
        classes_va, f_va, y_va = scan(root / "val")
        if classes_va != classes:
            raise DataError(f"{root}/val has classes {classes_va}, train has {classes}")
        files = f_tr + f_va
    else:
        classes, files, labels = scan(root)
        perm = np.random.default_rng(DATA_SEED).permutation(len(files))
        n_val = max(1, int(len(files) * VAL_FRACTION))
        va, tr = sorted(perm[:n_val]), sorted(perm[n_val:])
        f_tr, y_tr = [files[i] for i in tr], [labels[i] for i in tr]
        f_va, y_va = [files[i] for i in va], [labels[i] for i in va]
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class folder(s); a classifier needs at least 2")
    x_tr, x_va = _load_image_files(f_tr, IMAGE_SIZE_REAL), _load_image_files(f_va, IMAGE_SIZE_REAL)
    return _image_dataset("imagefolder", root, _folder_sha(sorted(files), root), x_tr, y_tr, x_va, y_va)


TORCHVISION_DATASETS = {  # folder torchvision looks for under root -> (name, class name)
    "cifar-10-batches-py": ("cifar10", "CIFAR10"),
    "MNIST": ("mnist", "MNIST"),
    "FashionMNIST": ("fashionmnist", "FashionMNIST"),
}


def torchvision_dataset(root: Path, folder: str) -> Dataset:
    import torchvision.datasets as tvd

    name, cls = TORCHVISION_DATASETS[folder]
    try:
        tr, va = (getattr(tvd, cls)(str(root), train=t, download=False) for t in (True, False))
    except Exception as e:  # torchvision raises RuntimeError / OSError / pickle errors for bad files
        raise DataError(f"cannot load {cls} from {root}: {str(e).splitlines()[0]}") from None
    x_tr, x_va = np.asarray(tr.data), np.asarray(va.data)
    if x_tr.ndim == 4:  # CIFAR: N x H x W x C
        x_tr, x_va = x_tr.transpose(0, 3, 1, 2), x_va.transpose(0, 3, 1, 2)
    return _image_dataset(name, root / folder, _folder_sha(sorted(p for p in (root / folder).rglob("*") if p.is_file()), root),
                          np.ascontiguousarray(x_tr), tr.targets, np.ascontiguousarray(x_va), va.targets)


def text_file_in(root: Path) -> Path | None:
    """The LM's text under a data root: the root itself if a file, else its single *.txt."""
    if root.is_file():
        return root
    txts = sorted(root.glob("*.txt"))
    return txts[0] if len(txts) == 1 else None


def check_root(root: Path) -> None:
    """Fail fast with one line when a data root cannot be used at all."""
    if not root.exists():
        raise DataError(f"--data-root {root} does not exist")
    if not os.access(root, os.R_OK):
        raise DataError(f"--data-root {root} is not readable")


def for_model(model: str, size: str, data_dir, data_root: str | None = None, context: int = 0) -> Dataset:
    """The dataset a model preset trains on: its task's data, cut to its context length (the
    preset's, or ``context`` tokens where given)."""
    entry = MODELS[model]
    return load(entry.task, entry.block_size(size, context), str(data_dir), data_root)


@functools.lru_cache(maxsize=8)
def load(task: str, block: int, data_dir: str, data_root: str | None = None) -> Dataset:
    """The dataset a model of ``task`` trains on; cached per process (read-only tensors)."""
    if data_root is None:
        return markov_dataset(Path(data_dir), block) if task == "lm" else shapes_dataset(Path(data_dir))
    root = Path(data_root)
    check_root(root)
    if task == "lm":
        text = text_file_in(root)
        return text_dataset(text, block) if text else markov_dataset(Path(data_dir), block)
    if root.is_file():
        raise DataError(f"--data-root {root} is a file; image models need a dataset folder "
                        f"(CIFAR10/MNIST/FashionMNIST as torchvision stores them, or an ImageFolder)")
    for folder in TORCHVISION_DATASETS:
        if (root / folder).is_dir():
            return torchvision_dataset(root, folder)
    return imagefolder_dataset(root)


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int) -> torch.Generator:
    """The RNG of one step's batch: a function of (seed, step) alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@functools.lru_cache(maxsize=4)
def _epoch_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def clear_batch_cache() -> None:
    """Forget the epoch permutations this process drew, so the next run draws its own as a fresh
    process would: the ops a traced family records do not depend on the families before it."""
    _epoch_perm.cache_clear()


def batch_indices(ds: Dataset, seed: int, step: int, batch_size: int) -> torch.Tensor:
    """Rows (images) or window starts (LM) of 1-based ``step``. Images go through seeded
    per-epoch permutations without replacement; LM windows are drawn uniformly."""
    if ds.task == "lm":
        hi = len(ds.train_x) - ds.info.block_size - 1
        return torch.randint(0, hi, (batch_size,), generator=step_generator(seed, step))
    n = len(ds.train_x)
    start = (step - 1) * batch_size
    epoch0, epoch1 = start // n, (start + batch_size - 1) // n
    if epoch0 == epoch1:
        lo = start % n
        return _epoch_perm(n, seed, epoch0)[lo : lo + batch_size]
    head = _epoch_perm(n, seed, epoch0)[start % n :]
    return torch.cat([head, _epoch_perm(n, seed, epoch1)[: batch_size - len(head)]])


def windows(tokens: torch.Tensor, starts: torch.Tensor, block: int) -> torch.Tensor:
    """Rows of ``block + 1`` consecutive tokens from each start (inputs and their next tokens)."""
    return tokens[starts[:, None] + torch.arange(block + 1, device=starts.device)]


def lm_windows(tokens: torch.Tensor, starts: torch.Tensor, block: int):
    w = windows(tokens, starts, block)
    return w[:, :-1], w[:, 1:]


def layout_generator(seed: int, step: int | str) -> torch.Generator:
    """The RNG of a padded or packed batch's lengths (and a packed batch's document starts): a
    function of (seed, step) alone, apart from the windows' own (``step_generator``), so a
    layout changes no window a ``full`` batch of the same step draws."""
    key = hashlib.sha256(f"layout|{seed}|{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:7], "little"))


def lm_batch(tokens: torch.Tensor, starts: torch.Tensor, block: int, layout: str, gen: torch.Generator | None):
    """An LM batch ``((inputs, segments), targets)`` in ``layout`` from window ``starts`` (full,
    right, left: one window each; packed: the number of rows), lengths drawn from ``gen``;
    ``full`` gives ``((inputs,), targets)`` and draws nothing."""
    if layout == layouts.FULL:
        x, y = lm_windows(tokens, starts, block)
        return (x,), y
    if layout == "packed":
        lengths = [layouts.pack_lengths(block, gen) for _ in range(len(starts))]
        hi = len(tokens) - block - 1
        doc_starts = [torch.randint(0, hi, (len(row),), generator=gen).tolist() for row in lengths]
        src, seg = (to_device(t, tokens.device) for t in layouts.packed(doc_starts, lengths, block))
        x, y = tokens[src], tokens[src + 1]
    else:
        x, y, seg = layouts.padded(windows(tokens, starts, block), layouts.draw_lengths(len(starts), block, gen), layout)
    return (x, seg), y


def on_device(ds: Dataset, device: torch.device) -> Dataset:
    """The dataset with its tensors (splits, labels, normalisation constants) moved to the
    device once, so a training step gathers its batch there: the only per-step transfer is the
    batch's indices, copied asynchronously from pinned memory."""
    if device.type == "cpu":
        return ds
    move = {k: getattr(ds, k).to(device) for k in ("train_x", "val_x", "train_y", "val_y", "mean", "std")
            if getattr(ds, k) is not None}
    return dataclasses.replace(ds, **move)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto ``device`` without blocking the host (pinned, non_blocking)."""
    if t.device == device or device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def normalize(ds: Dataset, x_u8: torch.Tensor) -> torch.Tensor:
    mean, std = ds.mean.to(x_u8.device), ds.std.to(x_u8.device)
    return (x_u8.float() / 255 - mean[:, None, None]) / std[:, None, None]


def train_batch(ds: Dataset, seed: int, step: int, batch_size: int, device: torch.device, layout: str = "full"):
    """Step ``step``'s batch ``(inputs, targets)`` on ``device``: indices drawn on the host (the
    same on every device), data gathered wherever ``ds`` lives (``on_device``: the device, with
    no blocking copy); an LM batch laid out as ``layout``."""
    idx = to_device(batch_indices(ds, seed, step, batch_size), ds.train_x.device)
    if ds.task == "lm":
        gen = None if layout == layouts.FULL else layout_generator(seed, step)
        inputs, y = lm_batch(ds.train_x, idx, ds.info.block_size, layout, gen)
        return tuple(t.to(device, non_blocking=True) for t in inputs), y.to(device, non_blocking=True)
    return (normalize(ds, ds.train_x[idx].to(device)),), ds.train_y[idx].to(device)


def val_batches(ds: Dataset, device: torch.device, batch_size: int = 256, layout: str = "full"):
    """The held-out split in fixed order, as ``(inputs, targets)``: LM in up to LM_EVAL_WINDOWS
    non-overlapping windows, laid out as ``layout`` with lengths of a fixed generator (every run
    and release scores the same tokens)."""
    if ds.task == "lm":
        T = ds.info.block_size
        n = min(LM_EVAL_WINDOWS, (len(ds.val_x) - 1) // T)
        starts = torch.arange(n, device=ds.val_x.device) * T
        gen = None if layout == layouts.FULL else layout_generator(0, "held-out")
        for i in range(0, n, batch_size):
            inputs, y = lm_batch(ds.val_x, starts[i : i + batch_size], T, layout, gen)
            yield tuple(t.to(device) for t in inputs), y.to(device)
        return
    for i in range(0, len(ds.val_x), batch_size):
        yield (normalize(ds, ds.val_x[i : i + batch_size].to(device)),), ds.val_y[i : i + batch_size].to(device)
