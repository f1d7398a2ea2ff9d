"""Fixtures of the task tests (lm, mlm, rtd, an outside regression task)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_corpus

from lmforge.data.shards import TokenData
from lmforge.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tokens(tmp_path_factory):
    """(tokenizer, TokenData) of a 300-line generated corpus, vocabulary 300: batches for the tasks' own tests."""
    corpus = make_corpus(tmp_path_factory.mktemp("task-tokens") / "corpus.txt", lines=300)
    tok = train_tokenizer(corpus.read_text().splitlines(), vocab_size=300)
    ids = np.array(tok.encode(corpus.read_text()), dtype=np.uint16)
    return tok, TokenData(train=ids, val=ids[:2000], vocab_size=tok.vocab_size, dtype=ids.dtype, meta={})
