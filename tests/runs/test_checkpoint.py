import os

import pytest
import torch

from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.runs import loader


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_atomic_write_leaves_no_temp_files(tmp_path):
    ckpt.atomic_write_text(tmp_path / "a.txt", "one")
    ckpt.atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_tied_weights_saved_once_and_reloaded(tmp_path):
    m = Tied()
    ckpt.save_weights(tmp_path / "m.safetensors", m)
    tensors, _ = ckpt.load_tensors(tmp_path / "m.safetensors")
    assert set(tensors) == {"emb.weight"}
    m2 = Tied()
    ckpt.load_weights(tmp_path / "m.safetensors", m2)
    assert torch.equal(m2.head.weight, m.emb.weight) and m2.head.weight is m2.emb.weight


def test_corrupt_and_missing_weights_are_user_errors(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    before = p.read_bytes()
    with pytest.raises(UserError, match="not a valid safetensors file"):
        ckpt.load_weights(p, Tied())
    assert p.read_bytes() == before
    with pytest.raises(UserError, match="not found"):
        ckpt.load_weights(tmp_path / "none.safetensors", Tied())


def test_shape_mismatch_names_the_tensor(tmp_path):
    ckpt.save_tensors(tmp_path / "m.safetensors", {"emb.weight": torch.zeros(3, 4)})
    with pytest.raises(UserError, match=r"emb.weight has shape \(3, 4\)"):
        ckpt.load_weights(tmp_path / "m.safetensors", Tied())


def test_train_state_round_trip(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.ones(1, 3)).sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    ckpt.save_train_state(tmp_path, m, opt, {"step": 7, "tokens": 70}, [rng])
    state = ckpt.load_train_state(tmp_path)
    assert state["meta"]["step"] == 7 and torch.equal(state["rng"][0], rng)
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(state["optimizer"])
    a, b = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_metrics_truncate(tmp_path):
    for s in (1, 2, 3):
        ckpt.append_metrics(tmp_path, {"step": s})
    with open(tmp_path / ckpt.METRICS, "a") as f:
        f.write('{"step": 4, "tor')  # torn by a kill
    ckpt.truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in ckpt.read_metrics(tmp_path)] == [1, 2]


def test_require_run_dir(tmp_path):
    with pytest.raises(UserError, match="not an lmforge run directory"):
        loader.require_run_dir(tmp_path)
    with pytest.raises(UserError, match="not found"):
        loader.require_run_dir(tmp_path / "nope")
