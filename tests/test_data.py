import math

import numpy as np
import pytest
import torch

from diagnostics.grid import data


def test_entropy_rate_of_a_deterministic_and_a_uniform_source():
    V = 4
    uniform = np.full((V, V), 1 / V)
    assert data.entropy_rate(uniform, V) == pytest.approx(math.log(V))
    cycle = np.roll(np.eye(V), 1, axis=1)  # a -> a+1 always
    assert data.entropy_rate(cycle, V) == pytest.approx(0.0)


def test_entropy_rate_matches_the_empirical_conditional_entropy():
    V, order = 8, 1
    P = data.markov_transitions(V, order, 0.3, seed=3)
    toks = data.sample_markov(P, V, order, 200_000, seed=4)
    counts = np.zeros((V, V))
    np.add.at(counts, (toks[:-1], toks[1:]), 1)
    joint = counts / counts.sum()
    cond = counts / counts.sum(1, keepdims=True)
    empirical = -(joint[counts > 0] * np.log(cond[counts > 0])).sum()
    assert data.entropy_rate(P, V) == pytest.approx(empirical, abs=0.01)


def test_order_two_context_chain_is_stochastic():
    V = 3
    P = data.markov_transitions(V, 2, 0.5, seed=0)
    chain = data.context_chain(P, V)
    assert chain.shape == (9, 9) and np.allclose(chain.sum(1), 1)


def test_markov_file_is_written_once_with_a_stable_hash(tmp_path):
    a = data.markov_dataset(tmp_path, 64)
    mtime = a.path.stat().st_mtime_ns
    b = data.markov_dataset(tmp_path, 64)
    assert a.path == b.path and a.sha256 == b.sha256 == data.sha256_file(a.path)
    assert b.path.stat().st_mtime_ns == mtime
    assert 0 < a.loss_floor < math.log(a.info.vocab_size)
    assert len(a.train_x) == data.MARKOV["train_tokens"] and len(a.val_x) == data.MARKOV["val_tokens"]


def test_corrupt_data_file_is_one_clear_error(tmp_path):
    ds = data.markov_dataset(tmp_path, 64)
    ds.path.write_bytes(b"not numpy")
    with pytest.raises(data.DataError, match="cannot read data file"):
        data.markov_dataset(tmp_path, 64)


def test_shapes_are_class_conditional_and_split(tmp_path):
    ds = data.shapes_dataset(tmp_path)
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape[1:] == (3, 16, 16)
    assert len(ds.val_x) == data.SHAPES["val"] and set(ds.train_y.tolist()) == set(range(10))
    # nearest class mean on the training set classifies held-out images far above chance
    x_tr, x_va = ds.train_x.float().flatten(1), ds.val_x.float().flatten(1)
    means = torch.stack([x_tr[ds.train_y == c].mean(0) for c in range(10)])
    acc = (torch.cdist(x_va, means).argmin(1) == ds.val_y).float().mean()
    assert acc > 0.5


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    ds = data.shapes_dataset(tmp_path)
    a = data.batch_indices(ds, 0, 7, 32)
    assert torch.equal(a, data.batch_indices(ds, 0, 7, 32))
    assert not torch.equal(a, data.batch_indices(ds, 1, 7, 32))


def test_image_epochs_visit_every_example_once(tmp_path):
    ds = data.shapes_dataset(tmp_path)
    n, bs = len(ds.train_x), 32
    seen = torch.cat([data.batch_indices(ds, 0, k, bs) for k in range(1, n // bs + 1)])
    assert len(set(seen.tolist())) == len(seen)
    crossing = data.batch_indices(ds, 0, n // bs + 1, bs)  # straddles epochs 0 and 1
    assert len(crossing) == bs


def test_lm_windows_shift_targets_by_one(tmp_path):
    ds = data.markov_dataset(tmp_path, 16)
    (x,), y = data.train_batch(ds, 0, 1, 4, torch.device("cpu"))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_text_file_is_character_level(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("hello world, é! " * 200, encoding="utf-8")
    ds = data.load("lm", 16, str(tmp_path / "d"), str(f))
    assert ds.name == "text" and ds.info.vocab_size == len(set("hello world, é! "))
    assert ds.sha256 == data.sha256_file(f)


def test_bad_roots_are_one_line_errors(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("image", 0, str(tmp_path), str(tmp_path / "nope"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00" * 2000)
    with pytest.raises(data.DataError, match="not UTF-8"):
        data.text_dataset(binary, 16)
    with pytest.raises(data.DataError, match="is a file"):
        data.load("image", 0, str(tmp_path), str(binary))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="image folder"):
        data.load("image", 0, str(tmp_path), str(tmp_path / "empty"))


def test_data_files_are_named_by_every_generator_parameter(tmp_path, monkeypatch):
    a = data.shapes_dataset(tmp_path)
    monkeypatch.setitem(data.SHAPES, "noise", data.SHAPES["noise"] + 1)
    b = data.shapes_dataset(tmp_path)
    assert a.path != b.path and a.sha256 != b.sha256
