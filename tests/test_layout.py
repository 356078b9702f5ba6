"""Batch layouts: each mask is what it claims to be, lengths are a function of (seed, step), the
loss and the held-out metric count real tokens only, and the grid carries the axis."""

import math

import pytest
import torch

from diagnostics.grid import data, layout
from diagnostics.grid.layout import IGNORE
from diagnostics.grid.models import GPT, GPTConfig
from diagnostics.grid.spec import GridOptions, RunSpec, SpecError, resolve_grid
from diagnostics.run import train

CTX = 24


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return data.markov_dataset(tmp_path_factory.mktemp("data"), CTX)


def batch(ds, kind, step=1, seed=0, size=8):
    (x, *seg), y = data.train_batch(ds, seed, step, size, torch.device("cpu"), kind)
    return x, (seg[0] if seg else None), y


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, block_size=CTX, n_layer=2, n_head=2, n_embd=16)).eval()


@pytest.mark.parametrize("kind", ["right", "left"])
def test_a_padding_token_is_never_attended_and_changes_no_real_logit(ds, model, kind):
    x, seg, y = batch(ds, kind)
    mask = layout.attention_mask(seg)
    pad = seg == 0
    assert pad.any() and not mask[:, 0][pad[:, None, :].expand_as(mask[:, 0])].any()  # no query sees a padding key
    assert (y[pad] == IGNORE).all() and (y[~pad] != IGNORE).all()  # padding targets are ignored, real ones scored
    other = torch.where(pad, torch.randint_like(x, 1, 32), x)  # other tokens in every padding slot
    with torch.no_grad():
        a, b = model(x, seg), model(other, seg)
    assert torch.equal(a[~pad], b[~pad])  # what a padding token holds reaches no real token
    assert not torch.equal(a[pad], b[pad])  # (the test can fail: padding queries do compute)


def test_a_packed_document_never_sees_another_and_its_positions_restart(ds, model):
    x, seg, y = batch(ds, "packed")
    assert (seg > 0).all() and (y != IGNORE).all()  # no padding: every token is a document's
    mask = layout.attention_mask(seg)[:, 0]
    same = seg[:, :, None] == seg[:, None, :]
    assert not (mask & ~same).any()  # never across documents
    assert torch.equal(mask, same & torch.ones(CTX, CTX, dtype=torch.bool).tril())  # block-diagonal causal
    pos = layout.positions(seg)
    starts = torch.ones_like(seg, dtype=torch.bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    assert (pos[starts] == 0).all() and (pos[~starts] > 0).all()
    row = int(torch.nonzero(seg.amax(1) >= 3)[0])  # a row of three documents or more
    second = seg[row] == 2
    other = x.clone()
    other[row, second] = (x[row, second] + 1) % 32
    with torch.no_grad():
        a, b = model(x, seg), model(other, seg)
    assert torch.equal(a[row, seg[row] != 2], b[row, seg[row] != 2])  # documents 1 and 3+ saw nothing of 2
    assert not torch.equal(a[row, second], b[row, second])


def test_a_fully_masked_row_is_met_by_left_and_never_by_right_or_packed(ds):
    counts = {k: int(layout.fully_masked_rows(layout.attention_mask(batch(ds, k)[1]))) for k in ("right", "left", "packed")}
    assert counts["left"] > 0 and counts["right"] == 0 and counts["packed"] == 0
    # and a full causal batch has none: its diagonal is always allowed
    full = layout.attention_mask(torch.ones(2, CTX, dtype=torch.long))
    assert int(layout.fully_masked_rows(full)) == 0


def test_lengths_are_a_function_of_seed_and_step(ds):
    for kind in ("right", "left", "packed"):
        a, b = batch(ds, kind, step=5), batch(ds, kind, step=5)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert not torch.equal(a[1], batch(ds, kind, step=6)[1]) and not torch.equal(a[1], batch(ds, kind, step=5, seed=1)[1])
    lengths = (batch(ds, "right")[1] > 0).sum(1)
    assert lengths.min() >= layout.shortest(CTX) and lengths.max() <= CTX and len(set(lengths.tolist())) > 1


def test_left_and_right_hold_the_same_sequences_and_full_draws_the_same_windows(ds):
    xr, sr, yr = batch(ds, "right")
    xl, sl, yl = batch(ds, "left")
    xf, _, yf = batch(ds, "full")
    for i in range(len(xr)):
        n = int(sr[i].sum())
        assert torch.equal(xr[i, :n], xl[i, CTX - n:]) and torch.equal(yr[i, :n], yl[i, CTX - n:])
        assert torch.equal(xr[i, :n], xf[i, :n])  # a padded row is its full window, cut


def test_the_loss_counts_real_tokens_only(ds, model):
    x, seg, y = batch(ds, "left")
    logits = model(x, seg).float()
    real = y != IGNORE
    by_hand = torch.nn.functional.cross_entropy(logits[real], y[real])
    from diagnostics.grid.models import logits_loss

    assert torch.allclose(logits_loss(logits, "lm", y), by_hand)


@pytest.mark.parametrize("kind", ["full", "left"])
def test_micro_batches_of_a_padded_batch_add_up_to_its_loss(ds, model, kind):
    x, seg, y = batch(ds, kind)
    inputs = (x,) if seg is None else (x, seg)
    from diagnostics.grid.models import logits_loss

    whole = logits_loss(model(*inputs).float(), "lm", y)
    parts = train.micro_batches(inputs, y, 3, padded=seg is not None)
    total = sum(logits_loss(model(*xs).float(), "lm", ys) * w for xs, ys, w in parts)
    assert torch.allclose(total, whole, rtol=1e-5)


def test_held_out_metric_counts_real_tokens(ds, model):
    loss, acc, name, n = train.evaluate(model, ds, torch.device("cpu"), torch.autocast("cpu", enabled=False), "right")
    real = sum(int((y != IGNORE).sum()) for _, y in data.val_batches(ds, torch.device("cpu"), layout="right"))
    full_n = train.evaluate(model, ds, torch.device("cpu"), torch.autocast("cpu", enabled=False))[3]
    assert name == "val_token_accuracy" and n == real < full_n and 0 <= acc <= 1 and math.isfinite(loss)


def test_the_grid_carries_layout_and_context_only_where_they_apply():
    specs = resolve_grid(GridOptions(grid="smoke", devices=("cpu",), layout="full,left", context="64,100")).specs()
    gpt = [s for s in specs if s.model == "gpt"]
    resnet = [s for s in specs if s.model == "resnet"]
    assert {(s.layout, s.context) for s in gpt} == {("full", 0), ("full", 100), ("left", 0), ("left", 100)}
    assert {(s.layout, s.context) for s in resnet} == {("full", 0)}  # no attention, no context
    ids = {s.id for s in gpt}
    assert "gpt-adamw-cosine-linear-cpu-fp32-left-ctx100-s0" in ids and "gpt-adamw-cosine-linear-cpu-fp32-s0" in ids
    with pytest.raises(SpecError, match="unknown layout"):
        resolve_grid(GridOptions(grid="smoke", layout="middle"))
    with pytest.raises(SpecError, match="context length"):
        resolve_grid(GridOptions(grid="smoke", context="4"))


def test_the_release_presets_cover_every_layout_at_odd_lengths_and_the_default_grid_does_not():
    for name in ("release", "changelog"):
        specs = resolve_grid(GridOptions(grid=name, devices=("cpu",))).specs()
        covered = {(s.layout, s.context, s.precision) for s in specs if s.attention == "default"}
        assert {(k, c, p) for k in layout.LAYOUTS for c in (0, 100, 192) for p in ("fp32", "bf16")} <= covered
        assert {(s.layout, s.attention) for s in specs if s.context == 100} >= {(k, a) for k in layout.LAYOUTS
                                                                                for a in ("math", "flash")}
    nightly = resolve_grid(GridOptions(grid="nightly", devices=("cuda",))).specs()
    assert {s.attention for s in nightly if s.layout == "left"} >= {"efficient", "cudnn", "math"}
    assert {s.context for s in nightly if s.layout == "packed"} >= {100, 192}
    default = resolve_grid(GridOptions(grid="default", devices=("cpu",))).specs()
    assert len(default) == 60 and {(s.layout, s.context) for s in default} == {("full", 0)}


def test_a_model_without_the_layout_is_a_skip_with_its_reason():
    spec = RunSpec(model="resnet", optimizer="sgd", scheduler="constant", warmup="none", device="cpu", steps=2,
                   layout="left")
    r = train.run(spec)
    assert r.status == "skipped" and "full batches only" in r.row["status_reason"]
