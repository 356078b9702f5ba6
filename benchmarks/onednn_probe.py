"""Is a convolution's change oneDNN's? One convolution, forward and backward, with torch's oneDNN
(mkldnn) path on and off, its output and gradients hashed: run it with each release's python and
compare the lines. A hash that moves between releases only with oneDNN on is oneDNN's kernel.

The default shape is the ResNet-8 convolution whose backward ``diagnostics explain`` names at
2.3.1 -> 2.4.1 (3x3, stride 2, 32 -> 64 channels, batch 32 of 8x8: the first op of the backward
fed the same bits that gave others).

    .release-envs/torch-2.3.1/bin/python benchmarks/onednn_probe.py
    .release-envs/torch-2.4.1/bin/python benchmarks/onednn_probe.py
"""

from __future__ import annotations

import argparse
import hashlib

import torch


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:10]


def probe(cin: int, cout: int, kernel: int, stride: int, batch: int, size: int, onednn: bool) -> dict[str, str]:
    """Hashes of the output and of the weight and input gradients of one seeded convolution."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
    x = torch.randn(batch, cin, size, size, requires_grad=True)
    with torch.backends.mkldnn.flags(enabled=onednn):
        y = conv(x)
        y.backward(torch.randn_like(y))
    return {"output": digest(y), "weight grad": digest(conv.weight.grad), "input grad": digest(x.grad)}


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("cin", 32), ("cout", 64), ("kernel", 3), ("stride", 2), ("batch", 32), ("size", 8)):
        p.add_argument(f"--{name}", type=positive, default=default)
    a = p.parse_args()
    torch.set_num_threads(1)  # as the grid's runs: one thread each
    shape = (a.cin, a.cout, a.kernel, a.stride, a.batch, a.size)
    for onednn in (True, False):
        h = probe(*shape, onednn=onednn)
        print(f"torch {torch.__version__.split('+')[0]} oneDNN {'on ' if onednn else 'off'}: "
              + ", ".join(f"{k} {v}" for k, v in h.items()))


if __name__ == "__main__":
    main()
