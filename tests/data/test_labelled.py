import csv
import json
import random

import pytest

from lmforge.data import corpora
from lmforge.data import registry as ds
from lmforge.data import text as dtext
from lmforge.data.labelled import (
    LabelledData,
    class_counts,
    load_labelled,
    read_labelled,
    read_texts,
    sort_labels,
    stratified_split,
)
from lmforge.errors import UserError

EXAMPLES = [("a fine film", "positive"), ("dull, long, and loud", "negative"), ("好评！", "positive"),
            ('he said "wow"', "positive"), ("line one\nline two", "negative")]


def _write(path, rows, header=("text", "label")):
    """A file of ``rows``; a .tsv is quoted the CSV way (read it with ``**QUOTED``: a text may hold a line break)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r)), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            w.writerow(header)
            w.writerows(rows)
    return path


QUOTED = {"tsv_quoting": "csv"}  # _write's .tsv files; a plain .tsv (the default): tests/test_tables.py


def _error(path, *args, **kw) -> str:
    with pytest.raises(UserError) as e:
        read_labelled(path, *args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl"])
def test_round_trip(tmp_path, ext):
    d = read_labelled(_write(tmp_path / f"d{ext}", EXAMPLES), **QUOTED)
    assert d.texts == [t for t, _ in EXAMPLES] and len(d) == 5
    assert d.label_names == ["negative", "positive"] and d.labels == [1, 0, 1, 1, 0]
    assert d.source == str(tmp_path / f"d{ext}")
    assert class_counts(d) == {"negative": 2, "positive": 3}


def test_quoted_csv_with_commas_quotes_and_newlines(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('id,text,label\n1,"a, b, and c",pos\n2,"two\nlines, ""quoted""",neg\n\n3,plain,pos\n', encoding="utf-8")
    d = read_labelled(f)
    assert d.texts == ["a, b, and c", 'two\nlines, "quoted"', "plain"] and d.labels == [1, 0, 1]


def test_bom_crlf_other_columns_and_int_labels(tmp_path):
    f = tmp_path / "b.csv"
    f.write_bytes("\ufeffreview,stars\r\ngreat,10\r\nbad,2\r\nok,1\r\n".encode("utf-8"))
    d = read_labelled(f, text_column="review", label_column="stars")
    assert d.label_names == ["1", "2", "10"] and d.labels == [2, 1, 0]  # numeric order, not "10" < "2"
    j = tmp_path / "i.jsonl"
    j.write_text('{"text": "x", "label": 1}\n\n{"text": "y", "label": "0"}\n{"text": "z", "label": " 1 "}\n')
    d = read_labelled(j)
    assert d.label_names == ["0", "1"] and d.labels == [1, 0, 1]
    assert sort_labels(["b", "a", "b"]) == ["a", "b"]


def test_label_names_fix_the_indices(tmp_path):
    f = _write(tmp_path / "t.tsv", [("x", "positive"), ("y", "positive")])
    assert read_labelled(f).label_names == ["positive"]
    d = read_labelled(f, label_names=["negative", "neutral", "positive"])
    assert d.labels == [2, 2] and d.label_names == ["negative", "neutral", "positive"]
    assert class_counts(d) == {"negative": 0, "neutral": 0, "positive": 2}


def test_label_seen_only_in_test(tmp_path):
    f = _write(tmp_path / "test.csv", [("x", "positive"), ("y", "neutral")])
    msg = _error(f, label_names=["negative", "positive"])
    assert msg == (f"{f}:3: label 'neutral' is not one the model knows (negative, positive); "
                   "a label seen only here cannot be predicted")


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, content, expected", [
    ("a.csv", "text,label\nok,pos\n,neg\n", "a.csv:3: empty text in 'text'"),
    ("a.csv", "text,label\nok,pos\n  ,neg\n", "a.csv:3: empty text"),
    ("a.csv", "text,label\nok,pos\nbad,\n", "a.csv:3: empty label in 'label'"),
    ("a.csv", "text,label\nok,pos\none, two,neg\n", "a.csv:3: 3 fields, expected 2 (the header has text, label); quote a field that holds a comma"),
    ("a.csv", 'text,label\n"multi\nline",pos\nshort\n', "a.csv:4: 1 field, expected 2"),
    ("a.csv", "sentence,label\nok,pos\n", "a.csv:1: no column 'text' in the header (the columns are: 'sentence', 'label')"),
    ("a.csv", "text,y\nok,pos\n", "a.csv:1: no column 'label' in the header (the columns are: 'text', 'y')"),
    ("a.csv", "text\tlabel\nok\tpos\n", "a.csv:1: no column 'text' in the header (the columns are: 'text\\tlabel'; is it tab-separated? name it .tsv)"),
    ("a.tsv", "text\tlabel\nok\tpos\nx\ty\tz\n", "a.tsv:3: expected 2 tab-separated fields (the header has text, label), got 3"),
    ("a.csv", 'text,label\nok,pos\n"open quote,neg\nmore,pos\n', "a.csv:3: bad CSV quoting: unexpected end of data"),
    ("a.csv", 'text,label\nok,pos\n"x"y,neg\n', "a.csv:3: bad CSV quoting"),
    ("a.csv", "text,label\nok,pos\n" + "x" * 200_000 + ",neg\n", "a.csv:3: a field longer than 131,072 characters"),
    ("a.csv", "", "a.csv:1: the file is empty"),
    ("a.csv", "\n\n", "a.csv:1: the file is empty"),
    ("a.csv", "text,label\n\n", "a.csv:3: no examples under the header"),
    ("a.jsonl", '{"text": "ok", "label": 1}\n{"text": "x", "label": 0\n', "a.jsonl:2: not valid JSON ("),
    ("a.jsonl", '{"text": "ok", "label": 1}\n\n["x", 0]\n', "a.jsonl:3: a JSON list, expected an object"),
    ("a.jsonl", '{"text": "ok", "label": 1}\n{"body": "x", "label": 0}\n', "a.jsonl:2: no key 'text' (the keys are: 'body', 'label')"),
    ("a.jsonl", '{"text": "ok"}\n', "a.jsonl:1: no key 'label' (the keys are: 'text')"),
    ("a.jsonl", '{"text": "", "label": 1}\n', "a.jsonl:1: empty text in 'text'"),
    ("a.jsonl", '{"text": 5, "label": 1}\n', "a.jsonl:1: 'text' is 5, expected a string"),
    ("a.jsonl", '{"text": "x", "label": 1.5}\n', "a.jsonl:1: 'label' is 1.5, expected a string or an integer"),
    ("a.jsonl", '{"text": "x", "label": null}\n', "a.jsonl:1: 'label' is null"),
    ("a.jsonl", '{"text": "x", "label": true}\n', "a.jsonl:1: 'label' is true"),
    ("a.jsonl", "\n", "a.jsonl:1: the file is empty"),
])
def test_bad_input(tmp_path, name, content, expected):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    assert expected in _error(f)


@pytest.mark.parametrize("data, expected", [
    (b"text,label\nok,pos\ncaf\xe9,neg\n", "bad.csv:3: not UTF-8 text (byte 0xe9)"),
    ("text,label\nok,pos\n".encode("utf-16"), "bad.csv:1: NUL byte: not UTF-8 text (UTF-16?"),
])
def test_not_utf8(tmp_path, data, expected):
    f = tmp_path / "bad.csv"
    f.write_bytes(data)
    assert expected in _error(f)


def test_unsupported_extension_and_missing_file(tmp_path):
    f = tmp_path / "d.xlsx"
    f.write_text("x")
    assert _error(f) == f"{f}: unsupported extension '.xlsx' (expected .csv, .tsv, .jsonl)"
    assert "unsupported extension '(none)'" in _error(tmp_path / "noext")
    assert _error(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: no such file (expected a .csv, .tsv, .jsonl file)"


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl"])
def test_read_texts_takes_the_text_column_of_any_file_with_or_without_labels(tmp_path, ext):
    texts = [t for t, _ in EXAMPLES]
    assert read_texts(_write(tmp_path / f"l{ext}", EXAMPLES), **QUOTED) == texts  # a labelled file: the label is ignored
    assert read_texts(_write(tmp_path / f"u{ext}", [(t,) for t in texts], header=("review",)), "review", **QUOTED) == texts
    (tmp_path / "t.txt").write_text("\ufeffone\n\n  two  \n", encoding="utf-8")
    assert read_texts(tmp_path / "t.txt") == ["one", "  two  "]


@pytest.mark.parametrize("name, content, expected", [
    ("a.csv", "review\nfine\n", "a.csv:1: no column 'text' in the header"),
    ("b.jsonl", '{"text": "ok"}\n{"text": "ok",\n', "b.jsonl:2: not valid JSON"),
    ("c.jsonl", '{"text": "ok"}\n{"body": "x"}\n', "c.jsonl:2: no key 'text'"),
    ("d.tsv", "text\tid\n\t3\n", "d.tsv:2: empty text"),
    ("e.txt", "\n\n", "e.txt:1: the file is empty"),
    ("f.md", "text\n", "unsupported extension '.md'"),
    ("g.jsonl", '["a list"]\n', "expected an object like {\"text\": \"...\"}"),
])
def test_read_texts_bad_input(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_texts(tmp_path / name)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_load_labelled_files_and_names(tmp_path):
    f = _write(tmp_path / "mine.jsonl", EXAMPLES)
    assert load_labelled(str(f)).texts == read_labelled(f).texts
    with pytest.raises(UserError, match="^unknown data set 'imdb': expected one of chn-reviews, movie-snippets or a path"):
        load_labelled("imdb")
    with pytest.raises(UserError, match="no such file"):
        load_labelled(str(tmp_path / "gone.tsv"))
    with pytest.raises(UserError, match="^data set 'shakespeare' is not a labelled set .*labelled sets: chn-reviews, movie-snippets"):
        load_labelled("shakespeare")
    with pytest.raises(UserError, match="^split 'dev' of 'chn-reviews': expected one of train, val, test$"):
        load_labelled("chn-reviews", split="dev")
    with pytest.raises(UserError, match="is not a text corpus .it is a model set"):
        dtext.load_text("minilm-l6")  # errors before any download (labelled sets are text sources: test_text_sources.py)


def test_load_registered_split(tmp_path, monkeypatch):
    """A registered labelled set, prepared from an inline sample instead of a download."""
    folder = tmp_path / "movie-snippets"
    folder.mkdir()
    by_label, stats = corpora.dedupe_labelled([(f"good {i}", "positive") for i in range(30)] + [(f"bad {i}", "negative") for i in range(30)])
    meta = corpora.write_labelled_splits(by_label, folder)
    (folder / "meta.json").write_text(json.dumps(dict(labels=sorted(by_label), **meta)))
    monkeypatch.setattr(ds, "get", lambda name: folder)
    parts = [load_labelled("movie-snippets", s) for s in corpora.LABELLED_SPLITS]
    assert [len(p) for p in parts] == [48, 6, 6]
    assert all(p.label_names == ["negative", "positive"] for p in parts)
    assert [class_counts(p) for p in parts] == [meta[s]["classes"] for s in corpora.LABELLED_SPLITS]


# ------------------------------------------------------------------------- stratified split
def _data(n_pos=300, n_neg=100, n_neu=20):
    rows = [(f"pos {i}", 2) for i in range(n_pos)] + [(f"neg {i}", 0) for i in range(n_neg)] + [(f"neu {i}", 1) for i in range(n_neu)]
    return LabelledData([t for t, _ in rows], [l for _, l in rows], ["negative", "neutral", "positive"], "mine.csv")


def test_stratified_split_keeps_class_ratios():
    train, val, test = stratified_split(_data())
    assert class_counts(train) == {"negative": 80, "neutral": 16, "positive": 240}
    assert class_counts(val) == {"negative": 10, "neutral": 2, "positive": 30}
    assert class_counts(test) == {"negative": 10, "neutral": 2, "positive": 30}
    assert not set(train.texts) & set(val.texts) and not set(val.texts) & set(test.texts) and not set(train.texts) & set(test.texts)
    assert sorted(train.texts + val.texts + test.texts) == sorted(_data().texts)
    assert train.label_names == ["negative", "neutral", "positive"] and train.source == "mine.csv (part 1 of 3)"


def test_stratified_split_is_deterministic_and_order_free():
    d = _data()
    a = stratified_split(d)
    assert [p.texts for p in a] == [p.texts for p in stratified_split(d)]
    rows = list(zip(d.texts, d.labels))
    random.Random(1).shuffle(rows)
    shuffled = LabelledData([t for t, _ in rows], [l for _, l in rows], d.label_names, d.source)
    assert [set(p.texts) for p in stratified_split(shuffled)] == [set(p.texts) for p in a]
    other = stratified_split(d, seed=1)
    assert [len(p) for p in other] == [len(p) for p in a] and set(other[2].texts) != set(a[2].texts)


def test_stratified_split_keeps_copies_together():
    texts = [f"t{i}" for i in range(50)] * 3 + ["both"] * 4
    labels = [i % 2 for i in range(150)] + [0, 1, 0, 1]
    parts = stratified_split(LabelledData(texts, labels, ["a", "b"], "x"), (0.5, 0.5))
    assert not set(parts[0].texts) & set(parts[1].texts)
    assert sum(map(len, parts)) == 154


def test_stratified_split_matches_the_registered_split():
    by_label = {"negative": [f"n{i}" for i in range(40)], "positive": [f"p{i}" for i in range(60)]}
    d = LabelledData(by_label["negative"] + by_label["positive"], [0] * 40 + [1] * 60, ["negative", "positive"], "x")
    for part, (neg, pos) in zip(stratified_split(d), zip(*(corpora.split_by_hash(t) for t in by_label.values()))):
        assert set(part.texts) == set(neg) | set(pos)


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (1.2, -0.2), ()])
def test_bad_fractions(fractions):
    with pytest.raises(UserError, match="expected numbers >= 0 that sum to 1"):
        stratified_split(_data(), fractions)
