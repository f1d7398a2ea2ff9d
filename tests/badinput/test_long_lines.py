"""Issue 14, item 13: a 20 MB line. Long lines are cut into pieces where BPE cuts anyway (same ids, same
tokenizer), and a one-line corpus is tokenized in bounded memory."""

from __future__ import annotations

import subprocess
import sys

from helpers import env1


def _long_line(n_chars: int, seed: int = 0) -> str:
    import random

    rng = random.Random(seed)
    words = ["the", "king", "春天来了", "x1", "42", "a'b", "<|endoftext|>", "  ", "\t", "é", ",", "...", "aaaa" * 40]
    out, n = [], 0
    while n < n_chars:
        w = rng.choice(words) + (" " if rng.random() < 0.8 else "")
        out.append(w)
        n += len(w)
    return "".join(out)


def test_long_lines_are_cut_where_bpe_cuts_anyway():
    """Pieces of a long line encode to exactly the ids of the whole, and train the same tokenizer."""
    from lmforge.data.shards import _encode_text
    from lmforge.tokenizer import text_pieces, train_tokenizer

    line = _long_line(300_000)
    pieces = list(text_pieces(line, 4096))
    assert "".join(pieces) == line and len(pieces) > 70 and max(map(len, pieces)) <= 4096
    tok = train_tokenizer([line[:50_000]], 330)
    whole = tok.encode(line)
    assert [i for p in pieces for i in tok.encode(p)] == whole
    assert _encode_text(tok, line + "\nend\n", "train").tolist() == whole + tok.encode("\n") + tok.encode("end\n")
    assert train_tokenizer(pieces, 400).sha256 == train_tokenizer([line], 400).sha256
    blob = "字" * 10_000  # one giant word: cut where it must be, still every character kept
    assert "".join(text_pieces(blob, 4096)) == blob


def test_prepare_tokens_encodes_bounded_batches(monkeypatch):
    from lmforge.data import shards as data
    from lmforge.tokenizer import PIECE_CHARS, train_tokenizer

    tok = train_tokenizer(["a b c the king"], 261)
    seen = []
    real = tok.encode_batch
    monkeypatch.setattr(tok, "encode_batch", lambda batch: seen.append(batch) or real(batch))
    line = _long_line(3 * PIECE_CHARS + 7)
    ids = data._encode_text(tok, line, "train")
    assert max(len(t) for b in seen for t in b) <= PIECE_CHARS and len(seen[0]) > 1
    assert ids.tolist() == tok.encode(line)


def test_a_one_line_corpus_is_tokenized_in_bounded_memory(tmp_path):
    """A 4 MB single-line corpus: tokenizer training and token shards (before: about 280 bytes a character,
    1.1 GB here; a 20 MB line took 3.1 GB in `lmforge pretrain`)."""
    corpus = tmp_path / "one-line.txt"
    corpus.write_text(_long_line(4_000_000), encoding="utf-8")
    script = f"""
import resource
from lmforge.data.text import load_text
from lmforge.tokenizer import train_tokenizer
from lmforge.data.shards import prepare_tokens
train, val = load_text({str(corpus)!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tok = train_tokenizer(train.splitlines(keepends=True), 400)
prepare_tokens(tok, train, val, {str(tmp_path / "data")!r})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env1(), timeout=300)
    assert p.returncode == 0, p.stderr
    grew_mb = int(p.stdout.split()[-1])
    assert grew_mb < 120, grew_mb  # before: 409 MB; now about 10


def test_evaluate_data_encodes_a_long_line_in_pieces_with_the_same_ids():
    from lmforge.tokenizer import PIECE_CHARS, encode_long, train_tokenizer

    tok = train_tokenizer([_long_line(50_000)], 330)
    line = _long_line(3 * PIECE_CHARS, seed=1)
    calls = []
    real = tok.hf.encode_batch
    tok.hf = type("Spy", (), {"__getattr__": lambda self, k: getattr(real.__self__, k),
                              "encode_batch": lambda self, b, **kw: calls.append(max(map(len, b), default=0)) or real(b, **kw)})()
    assert encode_long(tok, line) == real.__self__.encode(line, add_special_tokens=False).ids
    assert calls and max(calls) <= PIECE_CHARS
