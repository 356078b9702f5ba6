"""The model registry and the models: shapes, parameter counts, tied weights, initialisation."""

import math

import pytest
import torch

from diagnostics.grid import data
from diagnostics.grid.models import GPT_PRESETS, MODELS, RESNET_DEPTH, SIZES, DataInfo, build_model, count_params, task_loss

LM = DataInfo(vocab_size=32, block_size=64)
IMAGES = DataInfo(num_classes=10, channels=3, image_size=16)


def test_every_entry_answers_its_task_batch_and_context_for_every_size():
    for name, entry in MODELS.items():
        assert entry.task in ("lm", "image") and set(entry.batch_size) == set(SIZES), name
        for size in SIZES:
            assert entry.block_size(size) == (GPT_PRESETS[size].block_size if entry.task == "lm" else 0)


def test_the_dataset_of_a_model_follows_its_entry(tmp_path):
    assert data.for_model("gpt", "tiny", tmp_path).info.block_size == GPT_PRESETS["tiny"].block_size
    assert data.for_model("resnet", "tiny", tmp_path).task == "image"


def test_gpt_maps_tokens_to_logits_with_a_tied_head_and_gpt2_init():
    torch.manual_seed(0)
    m = build_model("gpt", "tiny", LM)
    idx = torch.randint(0, 32, (3, 64))
    assert m(idx).shape == (3, 64, 32)
    assert m.lm_head.weight is m.wte.weight  # tied: one tensor, counted once
    c = GPT_PRESETS["tiny"]
    per_block = (3 * c.n_embd * c.n_embd + 3 * c.n_embd) + (c.n_embd * c.n_embd + c.n_embd) \
        + (8 * c.n_embd * c.n_embd + 5 * c.n_embd) + 4 * c.n_embd  # attn, proj, mlp, 2 LayerNorms
    assert count_params(m) == 32 * c.n_embd + c.block_size * c.n_embd + c.n_layer * per_block + 2 * c.n_embd
    proj = [p for n, p in m.named_parameters() if n.endswith("proj.weight")]
    assert proj and all(abs(p.std().item() - 0.02 / math.sqrt(2 * c.n_layer)) < 0.004 for p in proj)
    loss = task_loss(m, "lm", ((idx[:, :-1],), idx[:, 1:]))
    assert abs(loss.item() - math.log(32)) < 0.2  # an untrained LM is near-uniform over 32 symbols


@pytest.mark.parametrize("size", SIZES)
def test_the_cifar_resnet_has_the_papers_depth(size):
    m = build_model("resnet", size, IMAGES)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert len(convs) + 1 == RESNET_DEPTH[size]  # 6n+2 = 3x3 convs + the classifier
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_image_models_adapt_to_grayscale_inputs():
    gray = DataInfo(num_classes=10, channels=1, image_size=28)
    for name in ("resnet", "resnet18", "vit"):
        if MODELS[name].needs_torchvision:
            pytest.importorskip("torchvision.models")
        m = build_model(name, "tiny", gray)
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10), name
