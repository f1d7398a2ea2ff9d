"""Sentence pairs: reading files and registered sets, splits, filters, length checks, the hsk-zh-en prepare."""

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from lmforge.data import corpora
from lmforge.data import registry as ds
from lmforge.data.pairs import Pairs, check_lengths, filter_pairs, load_pairs, read_pairs, split_pairs
from lmforge.errors import UserError


def _write(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return f


def _error(spec, **kw) -> str:
    with pytest.raises(UserError) as e:
        load_pairs(str(spec), **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _words(text):
    return len(text.split())


# ----------------------------------------------------------------------------------- reading
def test_tsv_with_zh_en_header(tmp_path):
    f = _write(tmp_path, "p.tsv", 'zh\ten\n你好。\tHello.\n\n"谢谢"\t"Thanks" \r\n')
    p = load_pairs(str(f), split="val")  # a file has no split: ignored
    assert (p.sources, p.targets, p.lines, p.source) == (["你好。", '"谢谢"'], ["Hello.", '"Thanks"'], [2, 4], str(f))
    assert len(p) == 2 and p.where(1) == f"{f}:4"


def test_csv_with_named_columns(tmp_path):
    f = _write(tmp_path, "p.csv", 'id,english,french\n1,"Hi, you","Salut, toi"\n2,"Two\nlines",Deux\n3,Cat,Chat\n')
    p = load_pairs(str(f), source_column="english", target_column="french")
    assert p.sources == ["Hi, you", "Two\nlines", "Cat"] and p.targets == ["Salut, toi", "Deux", "Chat"]
    assert p.lines == [2, 3, 5]
    auto = load_pairs(str(f))  # the first two columns
    assert auto.sources == ["1", "2", "3"] and auto.targets == p.sources


def test_jsonl(tmp_path):
    f = _write(tmp_path, "p.jsonl", '{"en": "Hi", "de": "Hallo", "id": 1}\n\n{"id": 2, "de": "Ja", "en": "Yes"}\n')
    p = load_pairs(str(f))  # the first two keys of the first object
    assert (p.sources, p.targets, p.lines) == (["Hi", "Yes"], ["Hallo", "Ja"], [1, 3])
    p = load_pairs(str(f), source_column="de", target_column="en")
    assert (p.sources, p.targets) == (["Hallo", "Ja"], ["Hi", "Yes"])


def test_auto_columns(tmp_path):
    f = _write(tmp_path, "p.tsv", "zh\ten\tlevel\n猫\tcat\t1\n")
    assert (load_pairs(str(f)).sources, load_pairs(str(f)).targets) == (["猫"], ["cat"])
    reverse = load_pairs(str(f), source_column="en")  # the target: the first other column
    assert (reverse.sources, reverse.targets) == (["cat"], ["猫"])
    assert load_pairs(str(f), target_column="level").sources == ["猫"]
    assert load_pairs(str(f), source_column="level").targets == ["猫"]
    q = _write(tmp_path, "q.tsv", 'zh,en\n"a",b\n')  # csv quoting in a .tsv
    assert _error(q) == f"{q}:1: one column in the header ('zh,en'), expected two: a source and a target, " \
                        "e.g. zh<TAB>en; is it comma-separated? name it .csv"
    c = _write(tmp_path, "c.tsv", 'zh\ten\n"a\tb"\tc\n')
    assert read_pairs(c, tsv_quoting="csv").sources == ["a\tb"]


# ------------------------------------------------------------------------------------ errors
def test_missing_column(tmp_path):
    f = _write(tmp_path, "p.tsv", "zh\ten\n猫\tcat\n")
    assert _error(f, source_column="de") == f"{f}:1: no column 'de' in the header (the columns are: 'zh', 'en')"
    assert _error(f, source_column="zh", target_column="fr") == \
        f"{f}:1: no column 'fr' in the header (the columns are: 'zh', 'en')"
    j = _write(tmp_path, "p.jsonl", '{"zh": "猫", "en": "cat"}\n{"zh": "狗"}\n')
    assert _error(j) == f"{j}:2: no key 'en' (the keys are: 'zh')"
    assert _error(f, source_column="zh", target_column="zh") == \
        f"{f}: the source and the target are both column 'zh' (expected two different columns)"


def test_one_column(tmp_path):
    f = _write(tmp_path, "p.tsv", "\nzh\n猫\n")
    assert _error(f) == f"{f}:2: one column in the header ('zh'), expected two: a source and a target, e.g. zh<TAB>en"
    c = _write(tmp_path, "p.csv", "zh\ten\n猫\tcat\n")
    assert _error(c).endswith("e.g. zh<TAB>en; is it tab-separated? name it .tsv")
    j = _write(tmp_path, "p.jsonl", '{"zh": "猫"}\n')
    assert _error(j) == f"{j}:1: one key in the first object ('zh'), expected two: a source and a target, e.g. zh<TAB>en"


def test_empty_side(tmp_path):
    f = _write(tmp_path, "p.tsv", "zh\ten\n猫\tcat\n狗\t  \n")
    assert _error(f) == f"{f}:3: empty target (column 'en')"
    g = _write(tmp_path, "p.csv", 'en,fr\nCat,Chat\n\n"",Rien\n')
    assert _error(g) == f"{g}:4: empty source (column 'en')"
    j = _write(tmp_path, "p.jsonl", '{"zh": "猫", "en": null}\n')
    assert _error(j) == f"{j}:1: 'en' is null, expected a string"


def test_no_pairs(tmp_path):
    f = _write(tmp_path, "p.tsv", "zh\ten\n\n")
    assert _error(f) == f"{f}:3: no examples under the header (expected one row per example)"
    e = _write(tmp_path, "e.tsv", "")
    assert _error(e) == f"{e}:1: the file is empty (expected a header row with 'source' and 'target')"
    j = _write(tmp_path, "e.jsonl", "\n \n")
    assert _error(j) == f"{j}:1: the file is empty (expected one JSON object a line)"


def test_bad_spec(tmp_path):
    assert _error("nope") == "unknown data set 'nope': expected one of hsk-zh-en or a path to a .csv, .tsv, .jsonl file"
    assert _error(tmp_path / "missing.tsv") == \
        f"{tmp_path / 'missing.tsv'}: no such file (expected a .csv, .tsv, .jsonl file of sentence pairs)"
    assert _error("chn-reviews").startswith("data set 'chn-reviews' is not a sentence-pair set (it is a labelled set")
    assert _error("hsk-zh-en", split="dev") == "split 'dev' of 'hsk-zh-en': expected one of train, val, test"
    assert _error("  ").startswith("translate.data '  ': expected")


# ---------------------------------------------------------------------- registered set, offline
def _record(id_, level, zh, en, **more):
    return {"id": id_, "hsk_level": level, "topic": "misc", "chinese": zh, "translation": {"en": en}, **more}


SAMPLE_HSK = [  # the shape of hsk_sentences_audio/data/sentences.json (fewer fields)
    _record("hsk1-0001", 1, "老师，您好！", "Hello, teacher!", tokens=[{"word": "老师", "gloss_en": "teacher"}]),
    _record("hsk1-0002", 1, "你好，\t很高兴认识你。\n", " Hello,\nnice to meet you. "),
    _record("hsk2-0001", 2, "这条路不通。", "This road is closed."),
    _record("hsk3-0001", 3, "这条路不通。", "This road is blocked."),  # one source, two translations
    _record("hsk4-0001", 4, "这是一场误会。", "This is a misunderstanding."),
    _record("hsk5-0001", 5, "这是一场误会。", "This is a misunderstanding."),  # a duplicate pair
    _record("hsk6-0001", 6, "  ", "(nothing)"),  # an empty side: dropped
] + [_record(f"hsk6-{i:04}", 6, f"第{i}句。", f"Sentence {i}.") for i in range(2, 60)]


def _rows(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "zh\ten"
    return [tuple(line.split("\t")) for line in lines[1:]]


def test_prepare_hsk_zh_en(tmp_path):
    raw = json.dumps(SAMPLE_HSK, ensure_ascii=False, indent=2).encode()
    meta = corpora.prepare_hsk_zh_en({corpora.HSK_SENTENCES: raw}, tmp_path)
    parts = {s: _rows(tmp_path / f"{s}.tsv") for s in corpora.PAIR_SPLITS}
    every = sum(parts.values(), [])
    assert len(every) == len(set(every)) == 63 == meta["unique"]
    assert (meta["records"], meta["pairs"], meta["duplicates"], meta["sources_with_several_translations"]) == (65, 64, 1, 1)
    assert meta["hsk_levels"] == {"1": 2, "2": 1, "3": 1, "4": 1, "6": 58}  # the duplicate keeps its first level
    assert ("你好， 很高兴认识你。", "Hello, nice to meet you.") in every  # tab and line breaks -> spaces, stripped
    road = [s for s, rows in parts.items() if any(zh == "这条路不通。" for zh, _ in rows)]
    assert len(road) == 1 and {en for zh, en in parts[road[0]] if zh == "这条路不通。"} == {"This road is closed.",
                                                                                           "This road is blocked."}
    for s in corpora.PAIR_SPLITS:
        assert meta[s]["lines"] == len(parts[s]) and sum(meta[s]["hsk_levels"].values()) == len(parts[s])
    sources = [{zh for zh, _ in rows} for rows in parts.values()]
    assert sum(map(len, sources)) == len(set().union(*sources)) == 62
    assert [len(x) for x in sources] == [meta[s]["sources"] for s in corpora.PAIR_SPLITS] == [56, 3, 3]  # 90/5/5
    again = tmp_path / "again"
    again.mkdir()
    shuffled = json.dumps(SAMPLE_HSK[::-1], ensure_ascii=False).encode()
    corpora.prepare_hsk_zh_en({corpora.HSK_SENTENCES: shuffled}, again)
    for s in ("val", "test"):  # the split depends on the sentences, not their order
        assert {zh for zh, _ in _rows(again / f"{s}.tsv")} == {zh for zh, _ in parts[s]}


def test_hsk_records_shape_errors():
    with pytest.raises(ValueError, match="expected a list"):
        corpora.hsk_records({"sentences": []})
    with pytest.raises(ValueError, match="record 0 .* expected chinese, translation.en and hsk_level"):
        corpora.hsk_records([{"chinese": "猫", "translation": "cat", "hsk_level": 1}])


@pytest.fixture
def fake_hsk(tmp_path, monkeypatch):
    whl = tmp_path / "hsk_sentences_audio-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(corpora.HSK_SENTENCES, json.dumps(SAMPLE_HSK, ensure_ascii=False))
        z.writestr("hsk_sentences_audio/__init__.py", "")
    entry = ds.REGISTRY["hsk-zh-en"]
    sha = hashlib.sha256(whl.read_bytes()).hexdigest()
    monkeypatch.setitem(ds.REGISTRY, "hsk-zh-en", entry.__class__(**{**entry.__dict__, "sha256": sha}))

    def fake_pip(e, dest):
        (dest / "out").mkdir()
        return Path(shutil.copy(whl, dest / "out"))

    monkeypatch.setattr(ds, "_pip_download", fake_pip)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))


def test_registered_set_offline(fake_hsk, tmp_path):
    assert ds.dataset_names("pairs") == ["hsk-zh-en"]
    parts = {s: load_pairs("hsk-zh-en", s) for s in corpora.PAIR_SPLITS}
    assert sum(map(len, parts.values())) == 63
    assert parts["val"].source == str(tmp_path / "cache" / "hsk-zh-en" / "val.tsv") and parts["val"].lines[0] == 2
    meta = json.loads((tmp_path / "cache" / "hsk-zh-en" / "meta.json").read_text())
    assert meta["content"] == "pairs" and meta["columns"] == ["zh", "en"] and meta["val"]["lines"] == len(parts["val"])
    reverse = load_pairs("hsk-zh-en", "train", source_column="en")
    assert reverse.sources == parts["train"].targets and reverse.targets == parts["train"].sources


# ------------------------------------------------------------------------------------ splits
def _pairs(n, copies=1):
    src = [f"source {i}" for i in range(n)] * copies
    return Pairs(src, [f"{s} -> target {k}" for k, s in enumerate(src)], "p.tsv", list(range(2, 2 + len(src))))


def test_split_is_deterministic_and_keeps_sources_together():
    p = _pairs(1000, copies=2)
    parts = split_pairs(p, 0.1, 0.05)
    assert list(parts) == ["train", "val", "test"] and [len(x) for x in parts.values()] == [1700, 200, 100]
    assert split_pairs(p, 0.1, 0.05) == parts
    sets = [set(x.sources) for x in parts.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    rev = Pairs(p.sources[::-1], p.targets[::-1], p.source, p.lines[::-1])
    assert [set(x.sources) for x in split_pairs(rev, 0.1, 0.05).values()] == sets  # order-free
    val = parts["val"]
    assert val.source == "p.tsv" and all(p.lines[p.targets.index(t)] == line for t, line in zip(val.targets, val.lines))
    assert list(split_pairs(p, 0.05)) == ["train", "val"]
    with pytest.raises(UserError, match="their sum under 1"):
        split_pairs(p, 0.6, 0.4)


# ----------------------------------------------------------------------------------- filters
def test_filter_pairs():
    p = Pairs(["a b", "a b c d e f", "a", "a b c", "x"], ["a b", "a", "a b c d e", "a b c d", "y"], "p.tsv", [2, 3, 4, 5, 6])
    assert filter_pairs(p, 0, 0, _words) == (p, 0)
    kept, dropped = filter_pairs(p, 4, 0, _words)  # either side over 4 tokens
    assert (kept.lines, dropped) == ([2, 5, 6], 2)
    kept, dropped = filter_pairs(p, 0, 3, _words)  # 6:1 and 5:1 are over 3
    assert (kept.lines, dropped) == ([2, 5, 6], 2)
    kept, dropped = filter_pairs(p, 3, 1.2, _words)
    assert (kept.sources, dropped) == (["a b", "x"], 3)
    chars = len  # a second tokenizer for the target side: characters
    kept, dropped = filter_pairs(p, 0, 3, _words, chars)  # 2:3, 6:1, 1:9, 3:7, 1:1 (words : characters)
    assert (kept.lines, dropped) == ([2, 5, 6], 2) and filter_pairs(p, 8, 0, _words, chars)[0].lines == [2, 3, 5, 6]
    with pytest.raises(UserError, match="expected 0 .off. or a ratio >= 1"):
        filter_pairs(p, 0, 0.5, _words)
    with pytest.raises(UserError, match="max_tokens -1"):
        filter_pairs(p, -1, 0, _words)


def test_check_lengths():
    p = Pairs(["a b", "a b c d", "a", "a b c"], ["x", "x y", "x y z w", "x y z w v"], "p.tsv", [2, 3, 5, 6])
    assert check_lengths(p, 4, 5, _words, "refuse") == 0
    assert check_lengths(p, 3, 3, _words, "truncate") == 3  # one pair counted once, over on both sides
    assert check_lengths(p, 0, 0, _words, "refuse") == 0  # 0 = no limit
    with pytest.raises(UserError) as e:
        check_lengths(p, 3, 8, _words, "refuse")
    assert str(e.value) == ("p.tsv:3: source has 4 tokens, the model's limit is 3 (model.block_size); "
                            "shorten or drop the pair, or set translate.too_long=truncate")
    with pytest.raises(UserError) as e:
        check_lengths(p, 8, 3, _words, "refuse")
    assert str(e.value).startswith("p.tsv:5: target has 4 tokens, the model's limit is 3 (model.block_size)")
    with pytest.raises(UserError, match="too_long: expected one of refuse, truncate"):
        check_lengths(p, 3, 3, _words, "cut")
    # one counter per side (separate tokenizers): the target in characters
    assert check_lengths(p, 4, 9, _words, len, "truncate") == 0
    assert check_lengths(p, 4, 3, _words, len, "truncate") == 2  # "x y z w" (7 chars), "x y z w v" (9)
    with pytest.raises(UserError) as e:
        check_lengths(p, 8, 6, _words, len, "refuse", limit="model.block_size - 1")
    assert str(e.value).startswith("p.tsv:5: target has 7 tokens, the model's limit is 6 (model.block_size - 1);")
