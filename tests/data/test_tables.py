"""lmforge.data.tables: one reader for .csv / .tsv / .jsonl / .txt tables, and the .tsv change of issue 15:
a .tsv is plain tab-separated lines (IANA text/tab-separated-values, no quoting) unless ``tsv_quoting="csv"``."""

import csv
import json

import pytest

from lmforge.config.sections import FinetuneConfig
from lmforge.data import corpora
from lmforge.data import registry as ds
from lmforge.data.labelled import load_labelled, read_labelled, read_texts
from lmforge.data.tables import TSV_QUOTINGS, Row, read_table
from lmforge.errors import UserError


def _file(tmp_path, name, content):
    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content, encoding="utf-8")
    return f


def _error(fn, *args, **kw) -> str:
    """The message of the UserError ``fn(*args, **kw)`` raises (rows read to the end): one line."""
    with pytest.raises(UserError) as e:
        out = fn(*args, **kw)
        if hasattr(out, "__next__"):  # read_table's rows
            list(out)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------- read_table
def test_rows_carry_their_lines_and_the_requested_columns(tmp_path):
    f = _file(tmp_path, "p.tsv", "id\tsource\ttarget\n1\tHello\tBonjour\n\n2\tGood night\tBonne nuit\n")
    rows = list(read_table(f, ["source", "target"]))
    assert [(r.line, r.values) for r in rows] == [(2, {"source": "Hello", "target": "Bonjour"}),
                                                  (4, {"source": "Good night", "target": "Bonne nuit"})]
    assert rows[1]["target"] == "Bonne nuit" and rows[1].where == f"{f}:4" and isinstance(rows[0], Row)
    assert str(rows[0].error("too long")) == f"{f}:2: too long"
    assert [r.values for r in read_table(f, ["target"])] == [{"target": "Bonjour"}, {"target": "Bonne nuit"}]


@pytest.mark.parametrize("name, content", [
    ("p.csv", 'source,target\nHello,Bonjour\n"Good, night","Bonne ""nuit"""\n'),
    ("p.tsv", 'source\ttarget\nHello\tBonjour\nGood, night\tBonne "nuit"\n'),
    ("p.jsonl", '{"source": "Hello", "target": "Bonjour"}\n{"target": "Bonne \\"nuit\\"", "source": "Good, night", "x": 1}\n'),
])
def test_the_same_table_in_each_format(tmp_path, name, content):
    rows = read_table(_file(tmp_path, name, content), ["source", "target"])
    assert [(r.line, r.text("source"), r.text("target")) for r in rows] == [(2 - name.endswith(".jsonl"), "Hello", "Bonjour"),
                                                                             (3 - name.endswith(".jsonl"), "Good, night", 'Bonne "nuit"')]


def test_bom_and_crlf(tmp_path):
    for name in ("b.tsv", "b.csv"):
        sep = "\t" if name.endswith(".tsv") else ","
        f = _file(tmp_path, name, f"\ufeffa{sep}b\r\nx{sep}y\r\n\r\nz{sep}w\r\n".encode())
        assert [(r.line, r["a"], r["b"]) for r in read_table(f, ["a", "b"])] == [(2, "x", "y"), (4, "z", "w")]


def test_txt_is_one_column(tmp_path):
    f = _file(tmp_path, "t.txt", "one\n\n  two  \n")
    assert [(r.line, r["text"]) for r in read_table(f, ["text"], formats=(".txt",))] == [(1, "one"), (3, "  two  ")]
    with pytest.raises(ValueError, match="a .txt file holds one column"):
        read_table(f, ["a", "b"], formats=(".txt",))
    assert "unsupported extension '.txt' (expected .csv, .tsv, .jsonl)" in _error(read_table, f, ["text"])


def test_row_text_checks_the_value(tmp_path):
    f = _file(tmp_path, "v.jsonl", '{"a": "ok", "b": 5}\n{"a": " ", "b": "x"}\n{"a": "\\ud800", "b": "x"}\n')
    r1, r2, r3 = read_table(f, ["a", "b"])
    assert r1.text("a") == "ok" and r1["b"] == 5
    assert str(pytest.raises(UserError, r1.text, "b").value) == f"{f}:1: 'b' is 5, expected a string"
    assert str(pytest.raises(UserError, r2.text, "a").value) == f"{f}:2: empty text in 'a' (expected some text)"
    assert f"{f}:3: 'a': not valid UTF-8 (a lone surrogate U+D800" in str(pytest.raises(UserError, r3.text, "a").value)


def test_first_error_in_file_order(tmp_path):
    """Rows are checked as they are read: a bad value on line 3 is reported before a bad layout on line 4."""
    f = _file(tmp_path, "o.tsv", "text\tlabel\nok\tpos\n\tneg\nx\ty\tz\n")
    assert _error(read_labelled, f).startswith(f"{f}:3: empty text in 'text'")


def test_opening_errors_are_raised_at_once(tmp_path):
    assert _error(read_table, tmp_path / "gone.tsv", ["a"]) == f"{tmp_path / 'gone.tsv'}: no such file (expected a .csv, .tsv, .jsonl file)"
    assert "bad.tsv:2: not UTF-8 text (byte 0xe9)" in _error(read_table, _file(tmp_path, "bad.tsv", b"a\nb\xe9\n"), ["a"])
    assert "u16.tsv:1: NUL byte" in _error(read_table, _file(tmp_path, "u16.tsv", "a\nb\n".encode("utf-16")), ["a"])
    with pytest.raises(ValueError, match="distinct column names"):
        read_table(tmp_path / "gone.tsv", ["a", "a"])


@pytest.mark.parametrize("name, content, columns, expected", [
    ("e.tsv", "", ["a", "b", "c"], "e.tsv:1: the file is empty (expected a header row with 'a', 'b' and 'c')"),
    ("e.tsv", "\n\n", ["a"], "e.tsv:1: the file is empty (expected a header row with 'a')"),
    ("h.tsv", "a\tb\n\n", ["a"], "h.tsv:3: no examples under the header (expected one row per example)"),
    ("m.tsv", "a\tc\nx\ty\n", ["a", "b"], "m.tsv:1: no column 'b' in the header (the columns are: 'a', 'c')"),
    ("c.tsv", "a,b\nx,y\n", ["a", "b"], "c.tsv:1: no column 'a' in the header (the columns are: 'a,b'; is it comma-separated? name it .csv)"),
    ("j.jsonl", '{"a": 1}\n[1]\n', ["a", "b"], 'j.jsonl:1: no key \'b\' (the keys are: \'a\')'),
    ("k.jsonl", '[1]\n', ["a", "b"], 'k.jsonl:1: a JSON list, expected an object like {"a": "...", "b": "..."}'),
])
def test_layout_errors(tmp_path, name, content, columns, expected):
    assert expected in _error(read_table, _file(tmp_path, name, content), columns)


def test_bad_tsv_quoting_value(tmp_path):
    f = _file(tmp_path, "a.tsv", "a\nb\n")
    assert _error(read_table, f, ["a"], tsv_quoting="pandas") == "tsv_quoting: expected one of none, csv, got 'pandas'"
    assert TSV_QUOTINGS == ("none", "csv")


# ------------------------------------------------------- the behaviour change: plain TSV
LEADING_QUOTE = 'text\tlabel\n"Best film of the year" says my mum. Not me.\tnegative\nfine\tpositive\n"\tpositive\n'


def test_tsv_text_that_begins_with_a_quote_is_read_as_written(tmp_path):
    f = _file(tmp_path, "r.tsv", LEADING_QUOTE)
    d = read_labelled(f)
    assert d.texts == ['"Best film of the year" says my mum. Not me.', "fine", '"']
    assert d.labels == [0, 1, 1] and d.label_names == ["negative", "positive"]
    assert read_texts(f) == d.texts
    # before: the csv module's quoting stopped at the quote after "year"
    assert _error(read_labelled, f, tsv_quoting="csv").startswith(f"{f}:2: bad TSV quoting: '\t' expected after '\"'")


def test_tsv_unclosed_quote_no_longer_swallows_the_next_lines(tmp_path):
    f = _file(tmp_path, "m.tsv", 'text\tlabel\n"Loved it\tpositive\nhated it\tnegative\nmeh"\tnegative\nok\tpositive\n')
    d = read_labelled(f)
    assert d.texts == ['"Loved it', "hated it", 'meh"', "ok"] and len(d) == 4
    # before: three lines merged into one text (a quoted field may span lines), one example lost silently
    old = read_labelled(f, tsv_quoting="csv")
    assert old.texts == ["Loved it\tpositive\nhated it\tnegative\nmeh", "ok"]


@pytest.mark.parametrize("content, line, got", [
    ("text\tlabel\nok\tpos\na tab\there\tneg\n", 3, 3),
    ("text\tlabel\nok\tpos\na line\nbreak\tneg\n", 3, 1),
    ("text\tlabel\nok\tpos\n\t\t\n", 3, 3),
])
def test_tsv_wrong_number_of_fields_is_a_one_line_error(tmp_path, content, line, got):
    f = _file(tmp_path, "t.tsv", content)
    expected = (f"{f}:{line}: expected 2 tab-separated fields (the header has text, label), got {got}; a .tsv field "
                "cannot hold a tab or a line break (remove it, or quote the fields the CSV way and read the file "
                "with tsv_quoting=csv)")
    assert _error(read_labelled, f) == expected
    assert _error(read_texts, f).startswith(f"{f}:{line}: expected 2 tab-separated fields")  # the label column is unused, the layout still counts


def test_tsv_quoting_csv_keeps_the_old_reading(tmp_path):
    rows = [("a fine film", "positive"), ('he said "wow"', "positive"), ("a\ttab and\na line break", "negative")]
    f = tmp_path / "q.tsv"
    with open(f, "w", newline="", encoding="utf-8") as out:  # pandas' to_csv(sep="\t") writes the same
        w = csv.writer(out, delimiter="\t")
        w.writerow(("text", "label"))
        w.writerows(rows)
    assert read_labelled(f, tsv_quoting="csv").texts == [t for t, _ in rows]
    assert read_texts(f, tsv_quoting="csv") == [t for t, _ in rows]
    assert load_labelled(str(f), tsv_quoting="csv").texts == [t for t, _ in rows]
    plain = read_labelled(f)  # plain: quotes are text, and a tab or line break splits a field (hence the option)
    assert plain.texts == ["a fine film", '"he said ""wow"""', '"a', 'a line break"']
    assert [plain.label_names[i] for i in plain.labels] == ["positive", "positive", "tab and", "negative"]
    # and the old messages
    bad = _file(tmp_path, "b.tsv", "text\tlabel\nok\tpos\nx\ty\tz\n")
    assert _error(read_labelled, bad, tsv_quoting="csv") == (f"{bad}:3: 3 fields, expected 2 (the header has text, label); "
                                                             "quote a field that holds a tab")
    unclosed = _file(tmp_path, "u.tsv", 'text\tlabel\nok\tpos\n"open\tneg\n')
    assert _error(read_labelled, unclosed, tsv_quoting="csv").startswith(f"{unclosed}:3: bad TSV quoting: unexpected end of data")


def test_csv_keeps_standard_quoting_whatever_tsv_quoting_says(tmp_path):
    f = _file(tmp_path, "q.csv", 'text,label\n"he said ""wow""",pos\n"two\nlines",neg\n')
    for quoting in TSV_QUOTINGS:
        assert read_labelled(f, tsv_quoting=quoting).texts == ['he said "wow"', "two\nlines"]


def test_registered_sets_are_read_with_csv_quoting(tmp_path, monkeypatch):
    """write_labelled_splits quotes a text holding a " the CSV way: a registered set reads back as it was written."""
    folder = tmp_path / "movie-snippets"
    folder.mkdir()
    texts = {"positive": [f'a "{i}" star film' for i in range(20)], "negative": [f"bad {i}" for i in range(20)]}
    meta = corpora.write_labelled_splits(texts, folder)
    (folder / "meta.json").write_text(json.dumps(dict(labels=sorted(texts), **meta)))
    assert '"a ""' in (folder / "train.tsv").read_text(encoding="utf-8")
    monkeypatch.setattr(ds, "get", lambda name: folder)
    read = [t for s in corpora.LABELLED_SPLITS for t in load_labelled("movie-snippets", s).texts]
    assert sorted(read) == sorted(texts["positive"] + texts["negative"])


# ------------------------------------------------------------------------------------ config
def test_finetune_tsv_quoting_field():
    assert FinetuneConfig().tsv_quoting == "none" and FinetuneConfig(tsv_quoting="csv").tsv_quoting == "csv"
    with pytest.raises(UserError, match="^finetune.tsv_quoting: expected one of none, csv, got 'quoted'$"):
        FinetuneConfig(tsv_quoting="quoted")


# ------------------------------------------------------------ finetune.tsv_quoting, end to end
def test_finetune_tsv_quoting_reaches_training_and_evaluation(tmp_path, capsys):
    """A .tsv quoted the CSV way (a text holds a tab): a file:line error by default, read with finetune.tsv_quoting=csv."""
    from lmforge.__main__ import main

    f = tmp_path / "q.tsv"
    with open(f, "w", newline="", encoding="utf-8") as out:
        w = csv.writer(out, delimiter="\t")
        w.writerow(("text", "label"))
        w.writerows((f"{'good bread' if i % 2 else 'bad rain'} {i}" + ("\tand a tab" if i == 3 else ""),
                     "positive" if i % 2 else "negative") for i in range(40))
    tiny = ["--finetune.data", str(f), "--model.name=lstm", "--model.n_embd=16", "--data.vocab_size=300",
            "--train.max_steps=2", "--train.batch_size=8", "--train.eval_interval=0", "--train.num_threads=1"]
    assert main(["finetune", *tiny, "--out", str(tmp_path / "plain")]) == 2
    assert f"{f}:5: expected 2 tab-separated fields" in capsys.readouterr().err
    assert main(["finetune", *tiny, "--finetune.tsv_quoting=csv", "--out", str(tmp_path / "clf")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "clf"), "--data", str(f)]) == 0  # the run's own tsv_quoting
    assert json.loads(capsys.readouterr().out)["examples"] == 40
    assert main(["predict", str(tmp_path / "clf"), "--input", str(f)]) == 2  # an input file: --tsv-quoting, default none
    assert f"{f}:5: expected 2 tab-separated fields" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "clf"), "--input", str(f), "--tsv-quoting", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 40
