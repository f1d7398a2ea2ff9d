"""Pretraining text from several sources at once, and labelled sets read as unlabelled text."""

import json
import os
from pathlib import Path

import pytest

from lmforge.data import text as dtext
from lmforge.errors import UserError


def _fake_labelled_set(name: str) -> None:
    """A prepared labelled set in the (per-test-session) cache, as `lmforge data get` leaves it."""
    out = Path(os.environ["LMFORGE_CACHE"]) / name
    out.mkdir(parents=True, exist_ok=True)
    rows = {"train": [("好评 服务周到", "positive"), ("差评 太吵了", "negative")],
            "val": [("还不错", "positive")], "test": [("TEST-ONLY 不会再来", "negative")]}
    for split, examples in rows.items():
        (out / f"{split}.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in examples), encoding="utf-8")
    (out / "meta.json").write_text(json.dumps({"name": name, "content": "labelled", "labels": ["negative", "positive"]}))


def test_labelled_set_gives_train_and_val_texts_never_test():
    _fake_labelled_set("chn-reviews")
    train, val = dtext.load_text("chn-reviews")
    assert train == "好评 服务周到\n差评 太吵了\n" and val == "还不错\n"
    assert "TEST-ONLY" not in train + val and "positive" not in train


def test_comma_joins_sources_in_order(tmp_path):
    _fake_labelled_set("chn-reviews")
    a = tmp_path / "a.txt"
    a.write_text("\n".join(f"line {i}" for i in range(200)))  # no final newline: the join adds one
    train, val = dtext.load_text(f"{a},chn-reviews")
    a_train, a_val = dtext.load_text(str(a))
    assert train == a_train + ("" if a_train.endswith("\n") else "\n") + "好评 服务周到\n差评 太吵了\n"
    assert val.startswith(a_val) and val.endswith("还不错\n")


def test_a_path_with_a_comma_is_a_path(tmp_path):
    f = tmp_path / "x,y.txt"
    f.write_text("one\ntwo\nthree\n")
    assert "".join(dtext.load_text(str(f), 0.3)).count("\n") == 3


@pytest.mark.parametrize("spec, expected", [
    ("peoples-daily,,x", "an empty name between commas"),
    ("no-such-set,also-missing", "unknown data set 'no-such-set'"),
    ("minilm-l6", "not a text corpus"),
])
def test_bad_source_lists(spec, expected):
    with pytest.raises(UserError, match=expected):
        dtext.load_text(spec)


def test_pretrain_on_a_labelled_set_through_the_cli(tmp_path):
    from helpers import lmforge

    _fake_labelled_set("chn-reviews")
    lmforge("pretrain", "--data.path", "chn-reviews", "--data.val_fraction", "0.5", "--model.block_size", "4",
                "--data.vocab_size", "300", "--train.max_steps", "2", "--train.batch_size", "2", "--out", str(tmp_path / "run"))
    assert (tmp_path / "run" / "model.safetensors").exists()
