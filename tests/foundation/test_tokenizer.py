import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import UserError
from lmforge.tokenizer import MIN_VOCAB_SIZE, SPECIAL_TOKENS, Tokenizer, train_tokenizer
from lmforge.tools.train_tokenizer import train_from_spec

CORPUS = [
    "the quick brown fox jumps over the lazy dog.\n",
    "To be, or not to be, that is the question:\n",
    "迈向充满希望的新世纪——一九九八年新年讲话\n",
    "中共中央总书记、国家主席江泽民发表1998年新年讲话。\n",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=320)


def test_special_ids(tok):
    assert [tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert [tok.hf.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS.values())
    assert tok.vocab_size == 320


# any text, plus text dense in CJK, emoji, odd whitespace, control characters and special-token strings
pieces = list("迈向新世纪中国 \t\n\r\x00\x1b\u3000\u200b😀👍🏽e\u0301") + list(SPECIAL_TOKENS.values()) + ["<|", "|>"]
unicode_text = st.text() | st.lists(st.sampled_from(pieces) | st.text(max_size=3)).map("".join)


@settings(max_examples=200, deadline=None)
@given(unicode_text)
def test_round_trip_any_unicode(tok, s):
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_special_strings_in_text(tok):
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eos_id in ids
    assert tok.decode(ids) == "a<|endoftext|>b"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_encode_batch_matches_encode(tok):
    texts = ["hello world", "", "新年讲话\n"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_compresses_chinese(tok):
    s = "中共中央总书记、国家主席江泽民"
    assert len(tok.encode(s)) < len(s.encode("utf-8"))  # merges learnt across UTF-8 bytes


def test_deterministic(monkeypatch):
    a = train_tokenizer(CORPUS, vocab_size=300)
    b = train_tokenizer(iter(CORPUS), vocab_size=300)
    assert a.to_json() == b.to_json() and a.sha256 == b.sha256
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # rayon threads: still the same bytes
    assert train_tokenizer(CORPUS * 50, vocab_size=300).sha256 == a.sha256


def test_save_load(tok, tmp_path):
    path = tok.save(tmp_path / "sub" / "tokenizer.json")
    assert path == tmp_path / "sub" / "tokenizer.json"
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp file left
    for where in (path, path.parent):
        back = Tokenizer.load(where)
        assert back.sha256 == tok.sha256
        assert back.encode("新年 hello") == tok.encode("新年 hello")


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="no such tokenizer file"):
        Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(UserError, match="no such tokenizer file"):
        Tokenizer.load(tmp_path)  # a folder without tokenizer.json
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer.json") as e:
        Tokenizer.load(bad)
    assert "\n" not in str(e.value)
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)


def test_vocab_too_small():
    with pytest.raises(UserError, match=f"at least {MIN_VOCAB_SIZE}"):
        train_tokenizer(CORPUS, vocab_size=259)


def test_vocab_unreachable_warns():
    with pytest.warns(UserWarning, match="reached only"):
        tok = train_tokenizer(["ab ab ab\n"], vocab_size=5000)
    assert MIN_VOCAB_SIZE <= tok.vocab_size < 5000


def test_from_gpt2_files(tok, tmp_path):
    model = json.loads(tok.to_json())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    g = Tokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    s = "To be, or not 新年讲话 <|endoftext|>!"
    assert g.encode(s) == tok.encode(s) and g.decode(g.encode(s)) == s
    assert g.eos_id == 1
    with pytest.raises(UserError, match="no such file"):
        Tokenizer.from_gpt2_files(tmp_path / "nope.json", tmp_path / "merges.txt")


def test_train_from_spec(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("".join(CORPUS[:4]) * 30, encoding="utf-8")
    path = train_from_spec(str(f), 300, tmp_path / "out")
    assert path == tmp_path / "out" / "tokenizer.json"
    assert Tokenizer.load(path).vocab_size == 300


@pytest.mark.data
def test_chinese_compression_on_peoples_daily():
    from lmforge.data.text import load_text

    train, val = load_text("peoples-daily")
    tok = train_tokenizer(train[:400_000].splitlines(keepends=True), vocab_size=4000)
    ids = tok.encode(val)
    assert tok.decode(ids) == val
    assert len(val) / len(ids) > 1.15  # chars per token; byte fallback alone would give 1/3
