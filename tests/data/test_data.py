import json

import numpy as np
import pytest
import torch

from lmforge.data.shards import TokenData, iter_eval_batches, make_batch, prepare_tokens, sample_starts
from lmforge.errors import UserError
from lmforge.tokenizer import train_tokenizer

TRAIN = "the cat sat on the mat.\n新年讲话\n\nthe dog sat on the log.\n" * 30
VAL = "the cat sat on the log.\n新年\n"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TRAIN.splitlines(keepends=True), vocab_size=280)


def test_prepare_writes_exact_tokens(tok, tmp_path):
    data = prepare_tokens(tok, TRAIN, VAL, tmp_path)
    assert data.dtype == np.uint16 and data.train.dtype == np.uint16
    assert isinstance(data.train, np.memmap) and not data.train.flags.writeable
    assert data.vocab_size == 280
    assert tok.decode(data.train) == TRAIN and tok.decode(data.val) == VAL  # "\n" kept, nothing added
    assert list(data.val) == tok.encode(VAL)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["train_tokens"] == len(data.train) and meta["tokenizer_sha256"] == tok.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    loaded = TokenData.load(tmp_path)
    assert np.array_equal(loaded.train, data.train) and loaded.vocab_size == 280


def test_prepare_reuses_when_fingerprint_matches(tok, tmp_path):
    prepare_tokens(tok, TRAIN, VAL, tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    calls = []
    real = tok.encode_batch
    tok.encode_batch = lambda texts: calls.append(1) or real(texts)
    try:
        prepare_tokens(tok, TRAIN, VAL, tmp_path)
        assert calls == [] and stamps == {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
        prepare_tokens(tok, TRAIN, VAL + "more\n", tmp_path)  # other text: prepared again
        assert calls
    finally:
        del tok.encode_batch
    assert tok.decode(TokenData.load(tmp_path).val) == VAL + "more\n"


def test_half_written_prep_is_redone(tok, tmp_path):
    prepare_tokens(tok, TRAIN, VAL, tmp_path)
    (tmp_path / "train.bin").write_bytes(b"\x00\x00")  # truncated: size disagrees with meta.json
    with pytest.raises(UserError, match="train.bin"):
        TokenData.load(tmp_path)
    assert tok.decode(prepare_tokens(tok, TRAIN, VAL, tmp_path).train) == TRAIN


def test_load_missing(tmp_path):
    with pytest.raises(UserError, match="not a prepared token folder"):
        TokenData.load(tmp_path)


def test_uint32_for_big_vocab(tmp_path):
    class Big:  # a stand-in with a vocab past uint16
        vocab_size, sha256 = 70_000, "x"
        def encode_batch(self, texts):
            return [[69_999, len(t)] for t in texts]
    data = prepare_tokens(Big(), "a\nbb\n", "c\n", tmp_path)
    assert data.dtype == np.uint32 and list(data.train) == [69_999, 2, 69_999, 3]


def test_make_batch_shift():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = make_batch(tokens, torch.tensor([0, 5, 90]), block_size=9)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 9)
    assert x[1].tolist() == list(range(5, 14)) and y[1].tolist() == list(range(6, 15))
    assert torch.equal(x[:, 1:], y[:, :-1]) and y[2, -1] == 99


def test_sample_starts_range_and_determinism():
    g = torch.Generator().manual_seed(0)
    s = sample_starts(20, 9, 1000, g)
    assert s.dtype == torch.int64 and s.min() == 0 and s.max() == 20 - 9 - 1
    assert torch.equal(s, sample_starts(20, 9, 1000, torch.Generator().manual_seed(0)))
    x, y = make_batch(np.arange(20), s, 9)  # every window fits
    assert y.max() == 19


def test_too_short_split():
    with pytest.raises(UserError, match=r"has 8 tokens.*block_size=8.*block_size smaller"):
        sample_starts(8, 8, 4, torch.Generator())
    with pytest.raises(UserError, match="val split has 3 tokens"):
        next(iter_eval_batches(np.arange(3), 8, 4))


def test_eval_batches_deterministic_and_spread():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(iter_eval_batches(tokens, 10, 8))
    xs = torch.cat([x for x, _ in batches])
    assert len(xs) == 99 and xs[0, 0] == 0 and xs[-1, -1] + 1 == 999  # tiles the split
    assert (xs[1:, 0] - xs[:-1, 0]).min() >= 10  # no overlap
    few = list(iter_eval_batches(tokens, 10, 8, max_batches=2))
    assert len(few) == 2 and all(x.shape == (8, 10) for x, _ in few)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(few, iter_eval_batches(tokens, 10, 8, max_batches=2)))
