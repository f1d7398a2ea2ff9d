"""Fixtures of the bad-input corpus: tiny run dirs made once per session, shared read-only by the cases.

``fixtures`` (session): a folder holding

- ``corpus.txt`` (tests/helpers.py make_corpus) and ``labels.tsv`` (two labels, learnable);
- ``lm``: a GPT LM from configs/gpt-tiny.yaml (block 32, vocabulary 300, 6 steps: config.yaml,
  tokenizer.json, model.safetensors, train_state.safetensors, metrics.jsonl, data/);
- ``clf``: a GPT classifier fine-tuned from ``lm`` (4 steps); ``lora``: the same with LoRA adapters;
  ``lstm``: an LSTM classifier from scratch (3 steps);
- ``int8``: ``lm`` compressed to int8 (has compression.json for ``report compress``);
- ``student.yaml``: a distillation student (GPT, 1 layer, 2 steps) for ``lm`` or ``clf``.

About 2 s in all. A case that may write gets copies (tests/badinput/test_badinput.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY, make_corpus, make_labelled, tree_digest

RUNS = ("lm", "clf", "lora", "lstm", "int8")
FILES = ("corpus", "labels", "tiny", "student")



STUDENT = ("model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 32}\n"
           "train: {max_steps: 2, batch_size: 4, eval_interval: 0, eval_batches: 1, save_interval: 1000}\n")


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    import contextlib
    import io

    from lmforge.__main__ import main

    root = tmp_path_factory.mktemp("badinput")
    fx = {"root": root, "corpus": make_corpus(root / "corpus.txt"), "labels": make_labelled(root / "labels.tsv", n=160),
          "tiny": TINY, "student": root / "student.yaml"}
    fx["student"].write_text(STUDENT, encoding="utf-8")
    common = ["--train.eval_interval=0", "--train.eval_batches=2", "--train.log_interval=2", "--train.batch_size=8"]
    steps = [
        ["pretrain", "--config", str(TINY), "--data.path", str(fx["corpus"]), "--data.vocab_size=300",
         "--model.block_size=32", "--train.max_steps=6", "--train.save_interval=3", *common, "--out", str(root / "lm")],
        ["finetune", "--finetune.data", str(fx["labels"]), "--base", str(root / "lm"), "--train.max_steps=4", *common,
         "--out", str(root / "clf")],
        ["finetune", "--finetune.data", str(fx["labels"]), "--base", str(root / "lm"), "--finetune.mode=lora",
         "--train.max_steps=4", *common, "--out", str(root / "lora")],
        ["finetune", "--finetune.data", str(fx["labels"]), "--model.name=lstm", "--model.n_embd=16", "--data.vocab_size=300",
         "--train.max_steps=3", *common, "--out", str(root / "lstm")],
        ["compress", str(root / "lm"), "--method", "int8", "--repeats", "1", "--max-batches", "1", "--out", str(root / "int8")],
    ]
    for argv in steps:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        assert code == 0, (argv, out.getvalue(), err.getvalue())
    for name in RUNS:
        fx[name] = root / name
    fx["digest"] = {name: tree_digest(fx[name]) for name in RUNS}
    return fx
