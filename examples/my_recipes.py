"""Your own recipes in the grid: an optimizer, a schedule and a model, registered by a plugin.

    diagnostics run --plugins examples/my_recipes.py --models mlp,gpt --optimizers radam,adamw \
        --schedulers poly,cosine --devices cpu

(or, from an installed package, an entry point in the group ``diagnostics.plugins`` naming this
module). Nothing here is specific to this project but the three calls at the end.
"""

import torch
from torch import nn
from torch.optim import lr_scheduler

import diagnostics


class MLP(nn.Module):
    """Images (N, C, H, W) to class logits (N, classes): all the trainer needs of an image model."""

    def __init__(self, channels: int, image_size: int, classes: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size**2, width), nn.GELU(),
                                 nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_mlp(size: str, data) -> nn.Module:
    """``size``: the preset ("tiny" on CPU grids, "small" on GPU); ``data``: the dataset's facts."""
    return MLP(data.channels, data.image_size, data.num_classes, width={"tiny": 64, "small": 256}[size])


def poly_kwargs(main_steps: int, lr: float) -> dict:
    """Polynomial decay over the steps after warmup (the numbers follow the run's length)."""
    return dict(total_iters=main_steps, power=2.0)


diagnostics.register_optimizer("radam", torch.optim.RAdam, lr=1e-3, weight_decay=1e-2)
diagnostics.register_scheduler("poly", lr_scheduler.PolynomialLR, resolve=poly_kwargs)
diagnostics.register_model("mlp", build_mlp, task="image", batch_size={"tiny": 32, "small": 128})
