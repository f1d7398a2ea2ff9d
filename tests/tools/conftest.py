"""Fixtures of the tools' tests (compress, distill, evaluate, export, generate)."""

from __future__ import annotations

import pytest
from helpers import TINY

from lmforge.__main__ import main


@pytest.fixture(scope="session")
def runs(tmp_path_factory, corpus, labelled):
    """Three tiny trained run dirs the tools read (compress, evaluate): ``lm`` (gpt-tiny, 40 steps), ``clf``
    (a classifier fine-tuned from it, 40 steps) and ``lstm`` (an LSTM classifier, 3 steps). Treat as read-only."""
    tmp = tmp_path_factory.mktemp("tool-runs")
    data = labelled
    common = ["--train.eval_interval=0", "--train.save_interval=1000"]
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.max_steps=40", *common,
                 "--out", str(tmp / "lm")]) == 0
    assert main(["finetune", "--finetune.data", str(data), "--base", str(tmp / "lm"), "--train.max_steps=40",
                 "--train.batch_size=16", "--train.lr=3e-3", *common, "--out", str(tmp / "clf")]) == 0
    assert main(["finetune", "--finetune.data", str(data), "--model.name=lstm", "--model.n_embd=16", "--data.vocab_size=300",
                 "--train.max_steps=3", *common, "--out", str(tmp / "lstm")]) == 0
    return tmp
