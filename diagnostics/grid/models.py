"""Reference models and their registry.

Each entry builds a model for a task ("lm" or "image") at a named size preset. Every model
answers ``loss(batch)`` with the mean cross-entropy of a batch ``(inputs, targets)`` and
``evaluate`` metrics come from the same call, so the training loop needs no per-model code.

Presets: ``tiny`` fits the CPU grids (one step in milliseconds on one core); ``small`` is the
nightly / GPU size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnostics.grid import attention, compat
from diagnostics.grid import layout as layouts

# --------------------------------------------------------------------------------------------
# gpt: a decoder-only transformer LM in the shape of nanoGPT's model.py
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 32  # set from the data at build time
    block_size: int = 64  # context length, tokens
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 64  # residual stream width
    dropout: float = 0.0  # off: the suite measures optimisation, not regularisation
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2 style)


GPT_PRESETS = {
    "tiny": GPTConfig(),
    "small": GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384),  # nanoGPT shakespeare-char
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def heads(self, x: torch.Tensor):
        """q, k, v as (B, n_head, T, head_dim)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        return (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def max_logit(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Largest attention logit q.k/sqrt(d) the mask allows (causal without one; a probe:
        SDPA never forms them)."""
        q, k, _ = self.heads(x)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        T = x.shape[1]
        if mask is None:
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return logits.masked_fill(~mask, float("-inf")).amax()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Causal self-attention (``is_causal``), or under ``mask`` (B, 1, T, T) where the batch's
        layout has one (``layout.attention_mask``)."""
        B, T, C = x.shape
        q, k, v = self.heads(x)
        y = attention.sdpa(q, k, v, attn_mask=mask, is_causal=mask is None,
                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = compat.layer_norm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = compat.layer_norm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + position embeddings, ``n_layer`` pre-LN blocks, final LayerNorm, tied LM head."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = compat.layer_norm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, idx: torch.Tensor, segments: torch.Tensor | None):
        """Token + position embeddings and the attention mask: positions 0..T-1 and no mask (causal)
        for a full batch; positions within each document and the layout's mask with ``segments``."""
        if segments is None:
            return self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)), None
        return self.wte(idx) + self.wpe(layouts.positions(segments)), layouts.attention_mask(segments)

    def forward(self, idx: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self.embed(idx, segments)
        for block in self.blocks:
            x = block(x, mask)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def probes(self, idx: torch.Tensor, segments: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The two small-scale instability signals of Wortsman et al. 2023: the largest attention
        logit over all blocks (attention-logit growth) and the mean log-partition log Z of the
        output logits (output-logit divergence). Device tensors; one extra forward pass."""
        x, mask = self.embed(idx, segments)
        attn_max = []
        for block in self.blocks:
            attn_max.append(block.attn.max_logit(block.ln_1(x), mask))
            x = block(x, mask)
        logits = self.lm_head(self.ln_f(x)).float()
        if segments is not None:
            logits = logits[segments > 0]
        return {"attn_logit_max": torch.stack(attn_max).amax(), "output_log_z": torch.logsumexp(logits, -1).mean()}


# --------------------------------------------------------------------------------------------
# image classifiers
# --------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """Wraps a built-in image network (the ``net.`` prefix of its state-dict keys is that of
    every saved seed checkpoint and baseline)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """torchvision's ``resnet.BasicBlock`` (two 3x3 conv + BatchNorm, identity or ``downsample``
    shortcut), with the same submodules created in the same order, so weights and state-dict
    keys match it bit for bit. Written here so the CIFAR ResNet needs no torchvision (whose
    compiled ops load only beside the torch build they were made for)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016, section 4.2: a 3x3 stem with 16 channels, three
    stages of ``n`` ``BasicBlock`` (16, 32, 64 channels; stride 2 entering stages 2 and 3),
    global average pooling and a linear classifier: depth 6n+2. The shortcut on a change of
    shape is a 1x1 convolution + BatchNorm (the paper's option B), the block's ``downsample``."""

    def __init__(self, n: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        layers, inplanes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                s = stride if i == 0 else 1
                down = None
                if s != 1 or inplanes != planes:
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=s, bias=False), nn.BatchNorm2d(planes))
                layers.append(BasicBlock(inplanes, planes, stride=s, downsample=down))
                inplanes = planes
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))  # global average pool; deterministic backward on CUDA


RESNET_DEPTH = {"tiny": 8, "small": 20}  # ResNet-8 for CPU budgets, ResNet-20 for nightly


def _resnet(size: str, info: DataInfo) -> nn.Module:
    n = (RESNET_DEPTH[size] - 2) // 6
    return Classifier(CifarResNet(n, info.num_classes, info.channels))


def _resnet18(size: str, info: DataInfo) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(num_classes=info.num_classes)
    if info.channels != 3:
        net.conv1 = nn.Conv2d(info.channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return Classifier(net)


VIT_PRESETS = {  # patch 4 divides the 16, 28 and 32 pixel inputs of the built-in and real data
    "tiny": dict(patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128),
    "small": dict(patch_size=4, num_layers=6, num_heads=6, hidden_dim=192, mlp_dim=768),
}


def _vit(size: str, info: DataInfo) -> nn.Module:
    from torchvision.models import VisionTransformer

    net = VisionTransformer(image_size=info.image_size, num_classes=info.num_classes, **VIT_PRESETS[size])
    if info.channels != 3:
        hidden = VIT_PRESETS[size]["hidden_dim"]
        p = VIT_PRESETS[size]["patch_size"]
        net.conv_proj = nn.Conv2d(info.channels, hidden, kernel_size=p, stride=p)
    return Classifier(net)


def _gpt(size: str, info: DataInfo) -> nn.Module:
    return GPT(replace(GPT_PRESETS[size], vocab_size=info.vocab_size, block_size=info.block_size or
                       GPT_PRESETS[size].block_size))


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data to be built."""

    vocab_size: int = 0  # lm
    block_size: int = 0  # lm: context length the data is cut into
    num_classes: int = 0  # image
    channels: int = 0  # image
    image_size: int = 0  # image: square side in pixels


@dataclass(frozen=True)
class ModelEntry:
    """Everything the suite needs to know of a model, in the spirit of torch's OptimizerInfo:
    adding a model is one entry here."""

    name: str
    task: str  # "lm" or "image": which data it trains on (data.load)
    build: Callable[[str, DataInfo], nn.Module]  # (size preset, data facts) -> logits model (task_loss)
    batch_size: dict  # size preset (each of SIZES) -> default batch size
    needs_torchvision: bool  # a stack without a working torchvision skips it, saying so
    context: dict = field(default_factory=dict)  # LM: size preset -> context length the data is cut into
    has_attention: bool = False  # scaled-dot-product attention: the --attention axis applies
    # batch layouts it takes (layout.LAYOUTS): beyond "full", its forward takes the batch's
    # segments as a second argument (``GPT.forward``)
    layouts: tuple[str, ...] = (layouts.FULL,)

    def block_size(self, size: str, context: int = 0) -> int:
        """Context length of an LM preset, or ``context`` where given (0 for image models)."""
        return (context or self.context.get(size, 0)) if self.task == "lm" else 0


SIZES = ("tiny", "small")  # the presets every model has: CPU grids, nightly/GPU
MODELS: dict[str, ModelEntry] = {
    "gpt": ModelEntry("gpt", "lm", _gpt, {"tiny": 16, "small": 32}, False,
                      context={size: preset.block_size for size, preset in GPT_PRESETS.items()}, has_attention=True,
                      layouts=layouts.LAYOUTS),
    "resnet": ModelEntry("resnet", "image", _resnet, {"tiny": 32, "small": 128}, False),
    "resnet18": ModelEntry("resnet18", "image", _resnet18, {"tiny": 32, "small": 128}, True),
    "vit": ModelEntry("vit", "image", _vit, {"tiny": 32, "small": 128}, True, has_attention=True),
}


TASKS = ("lm", "image")


def task_loss(model: nn.Module, task: str, batch: tuple[tuple, torch.Tensor]) -> torch.Tensor:
    """A batch's training loss, in float32: next-token cross entropy of an LM's logits (N, T, V)
    against (N, T) targets (padding targets ignored: ``layout.IGNORE``), or class cross entropy
    of an image model's logits (N, classes). Every
    model, built in or registered, trains on this: a module only maps inputs to logits."""
    inputs, y = batch
    return logits_loss(model(*inputs).float(), task, y)


def logits_loss(logits: torch.Tensor, task: str, y: torch.Tensor) -> torch.Tensor:
    """``task_loss`` from logits already computed (evaluation scores the same logits too)."""
    if task == "lm":
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
    return F.cross_entropy(logits, y)


def build_model(name: str, size: str, info: DataInfo) -> nn.Module:
    return MODELS[name].build(size, info)


def count_params(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
