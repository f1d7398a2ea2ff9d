"""Fine-tuning end to end on a tiny labelled file: from a pretrained GPT run (full, LoRA), and the LSTM."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import REPO, TINY, make_corpus, make_labelled

from lmforge.__main__ import main
from lmforge.data.batches import ClassifyBatches
from lmforge.runs.loader import load_run


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    corpus = make_corpus(tmp / "corpus.txt")
    with open(corpus, "a") as f:
        f.write("people sing of bread\n" * 20)
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.max_steps=60", "--out", str(tmp / "lm")]) == 0
    return tmp, make_labelled(tmp / "train.tsv")


def ft(tmp, data, out, *extra):
    return main(["finetune", "--finetune.data", str(data), "--train.max_steps=60", "--train.batch_size=16",
                 "--train.lr=3e-3", "--train.eval_interval=0", "--train.save_interval=30", "--out", str(tmp / out), *extra])


def test_full_finetune_from_pretrained_gpt(base, capsys):
    tmp, data = base
    assert ft(tmp, data, "full", "--base", str(tmp / "lm"), "--train.max_steps=150") == 0
    out = capsys.readouterr().out
    acc = float(out.rsplit("val accuracy", 1)[1])
    assert acc >= 0.9, out
    cfg, model, tok = load_run(tmp / "full")
    assert cfg.finetune.label_names == ["negative", "positive"] and cfg.model.name == "gpt"
    from lmforge.runs.files import read_metrics

    vals = [r for r in read_metrics(tmp / "full") if r["split"] == "val"]
    assert vals and vals[-1]["step"] == 150 and abs(vals[-1]["accuracy"] - acc) < 1e-4  # logged at each evaluation


def test_lora_stores_adapters_only_and_reloads(base, capsys):
    tmp, data = base
    assert ft(tmp, data, "lora", "--base", str(tmp / "lm"), "--finetune.mode=lora", "--lora.targets=c_attn,c_fc",
              "--train.lr=1e-2") == 0
    acc = float(capsys.readouterr().out.rsplit("val accuracy", 1)[1])
    from safetensors.torch import load_file

    keys = load_file(tmp / "lora" / "model.safetensors").keys()
    assert keys and all("lora_" in k or k.startswith("head.") for k in keys)
    _, model, tok = load_run(tmp / "lora")
    from lmforge.data.batches import collate, encode_texts
    from lmforge.data.labelled import read_labelled
    from lmforge.recipes.finetune import accuracy

    d = read_labelled(data)
    ids = encode_texts(tok, d.texts, 64)
    batches = [(collate(ids[i:i + 32], tok.pad_id), torch.tensor(d.labels[i:i + 32])) for i in range(0, len(ids), 32)]
    assert accuracy(model, batches) >= 0.8 and acc > 0.6


def test_finetune_dropout_overrides_the_bases(base, tmp_path):
    tmp, data = base
    lm_cfg, _, _ = load_run(tmp / "lm")
    for extra, want in [((), lm_cfg.model.dropout), (("--finetune.dropout=0.3",), 0.3)]:
        out = tmp_path / f"d{len(extra)}"
        assert main(["finetune", "--finetune.data", str(data), "--base", str(tmp / "lm"), "--train.max_steps=2",
                     "--train.eval_interval=0", "--out", str(out), *extra]) == 0
        cfg, model, _ = load_run(out)
        ps = {m.p for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Dropout)}
        assert cfg.model.dropout == want and ps == {want}, (ps, want)
    assert lm_cfg.model.dropout != 0.3


def test_lstm_baseline_from_scratch(base, capsys):
    tmp, data = base
    assert ft(tmp, data, "lstm", "--model.name=lstm", "--model.n_embd=32", "--model.n_layer=1", "--data.vocab_size=300",
              "--train.lr=1e-2") == 0
    assert float(capsys.readouterr().out.rsplit("val accuracy", 1)[1]) >= 0.8


def test_batches_are_a_function_of_the_step():
    b = ClassifyBatches([[i] for i in range(10)], list(range(10)), [], [], 0, 4, seed=1)
    (x1, _), _ = b.train_batch(7, 0, 4)
    (x2, _), _ = ClassifyBatches([[i] for i in range(10)], list(range(10)), [], [], 0, 4, seed=1).train_batch(7, 0, 4)
    assert torch.equal(x1, x2)
    seen = torch.cat([b.train_batch(s, 0, 4)[0][0].flatten() for s in range(5)])  # 20 picks = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


def test_length_grouped_batches():
    rng = random.Random(0)
    ids = [[7] * rng.randint(1, 100) for _ in range(1000)]
    make = lambda group: ClassifyBatches(ids, [i % 2 for i in range(1000)], [], [], 0, 8, seed=3, group_by_length=group)
    grouped, plain = make(True), make(False)
    per_epoch = 1000 // 8
    picks = [grouped._picks(s) for s in range(per_epoch)]
    flat = [i for b in picks for i in b]
    assert len(set(flat)) == len(flat) == per_epoch * 8  # one epoch: every example at most once
    assert picks[5] == make(True)._picks(5) and grouped._picks(per_epoch) != picks[0]  # pure in (seed, step); epochs differ
    padded = lambda b: sum(max(len(ids[i]) for i in p) * len(p) for p in map(b._picks, range(50)))
    assert padded(grouped) < 0.7 * padded(plain)  # far less padding than random batches
    (x, mask), y = grouped.train_batch(9, 1, 4)  # a process's slice of the global batch
    assert x.shape[0] == 4 and torch.equal(y, torch.tensor([i % 2 for i in grouped._picks(9)[4:]]))


def test_predict_proba_keeps_the_input_order(base):
    from lmforge.tasks.classify import predict_proba

    tmp, data = base
    assert ft(tmp, data, "order", "--train.max_steps=5", "--model.name=lstm", "--model.n_embd=16") == 0
    _, model, tok = load_run(tmp / "order")
    texts = ["bread", "the king walks to the castle at night while people sing of rain", "queen", "people sing at night"]
    together = predict_proba(model, tok, texts, 64, batch_size=2)
    one_by_one = torch.cat([predict_proba(model, tok, [t], 64) for t in texts])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)


def test_evaluate_and_predict_a_classifier(base, capsys, tmp_path):
    import json

    tmp, data = base
    run = tmp / "full"
    if not run.exists():
        assert ft(tmp, data, "full", "--base", str(tmp / "lm"), "--train.max_steps=150") == 0
    capsys.readouterr()
    out = tmp_path / "e.json"
    assert main(["evaluate", str(run), "--data", str(data), "--text-column", "text", "--label-column", "label",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "confusion"} <= r.keys() and r["accuracy"] >= 0.85
    assert sum(map(sum, r["confusion"])) == r["examples"] == 240
    capsys.readouterr()
    assert main(["predict", str(run), "the people sing of bread", "the king and queen walk at night"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["positive", "negative"]
    assert all(0.5 <= float(line.split("\t")[1]) <= 1.0 for line in lines)
    inputs = tmp_path / "in.jsonl"  # the same texts from a file, after one given as an argument
    inputs.write_text('{"text": "the people sing of bread", "id": 1}\n{"text": "the king and queen walk at night"}\n')
    assert main(["predict", str(run), "queen and bread", "--input", str(inputs)]) == 0
    again = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(a[0], a[2]) for a in again] == [(b.split("\t")[0], b.split("\t")[2]) for b in lines]
    assert all(abs(float(a[1]) - float(b.split("\t")[1])) < 1e-3 for a, b in zip(again, lines))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    assert main(["predict", str(run), "--input", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl:2: no key 'text'" in err and "\n" not in err and "Traceback" not in err


def test_classifier_bad_inputs(base, capsys, tmp_path):
    tmp, data = base
    no_label = tmp_path / "nolabel.tsv"
    no_label.write_text("text\tstars\nhello\t5\n")
    unseen = tmp_path / "unseen.tsv"
    unseen.write_text("text\tlabel\nhello there\tneutral\n")
    empty_text = tmp_path / "empty.tsv"
    empty_text.write_text("text\tlabel\n\tpositive\n")
    import shutil

    from lmforge.tokenizer import train_tokenizer

    mismatched = tmp_path / "mismatched-base"  # a base whose tokenizer is larger than its checkpoint's vocabulary
    shutil.copytree(tmp / "lm", mismatched)
    train_tokenizer([open(data).read() * 3, "x y z " * 50, "".join(map(chr, range(0x4e00, 0x4fff)))], 1500,
                    min_frequency=1).save(mismatched / "tokenizer.json")
    cases = [
        (["finetune", "--finetune.data", str(no_label), "--out", str(tmp_path / "a")], "label"),
        (["finetune", "--finetune.data", str(empty_text), "--out", str(tmp_path / "b")], "empty"),
        (["evaluate", str(tmp / "full"), "--data", str(unseen)], "neutral"),
        (["finetune", "--finetune.data", str(data), "--base", str(tmp / "lm"), "--finetune.mode=lora",
          "--lora.targets=nothing_here", "--out", str(tmp_path / "c")], "nothing_here"),
        (["predict", str(tmp / "lm"), "hello"], "not a fine-tuned classifier"),
        (["finetune", "--finetune.data", str(data), "--base", str(mismatched), "--out", str(tmp_path / "d")],
         "smaller than the tokenizer"),
    ]
    for argv, needle in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.splitlines()[-1].startswith("lmforge: error: ") and needle in err.splitlines()[-1], (argv, err)
    assert not any((tmp_path / d).exists() for d in "abcd")  # failed runs leave no half-made run dir


@pytest.mark.slow
def test_lora_run_killed_and_resumed_is_bit_exact(base, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import env1
    from safetensors.torch import load_file

    from lmforge.runs.files import read_metrics

    tmp, data = base
    argv = ["finetune", "--finetune.data", str(data), "--base", str(tmp / "lm"), "--finetune.mode=lora",
            "--lora.dropout=0.1", "--train.max_steps=200", "--train.batch_size=16", "--train.save_interval=25",
            "--train.log_interval=10", "--train.eval_interval=0", "--train.num_threads=1"]
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    p = subprocess.Popen([sys.executable, "-m", "lmforge", *argv, "--out", str(tmp_path / "run")], env=env1(), cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None and max([r["step"] for r in read_metrics(tmp_path / "run")] or [0]) < 130:
        assert time.time() - t0 < 120
        time.sleep(0.01)
    assert p.poll() is None, "finished before the kill"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert main(["finetune", "--resume", str(tmp_path / "run")]) == 0
    ref, got = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_finetune_from_a_hugging_face_bert_folder(base, tmp_path, capsys):
    """--base-hf: a (tiny, random) HF BERT folder with a WordPiece vocab -> an encoder classifier (cls pooling)."""
    import transformers

    from lmforge.config import ModelConfig
    from lmforge.hf import hf_bert_config

    _, data = base
    words = "the king and queen walk to castle at night while people rain bread sing".split()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    torch.manual_seed(0)
    cfg = ModelConfig(name="bert", vocab_size=5 + len(words), n_layer=2, n_head=2, n_embd=32, block_size=64, norm_eps=1e-12)
    hf = transformers.BertForMaskedLM(hf_bert_config(cfg))
    hf.save_pretrained(tmp_path / "bert", safe_serialization=True)
    from lmforge.tokenizer import Tokenizer

    Tokenizer.from_wordpiece_vocab(vocab).save(tmp_path / "bert" / "tokenizer.json")
    assert main(["finetune", "--finetune.data", str(data), "--base-hf", str(tmp_path / "bert"), "--train.max_steps=150",
                 "--train.batch_size=16", "--train.lr=1e-3", "--train.eval_interval=0", "--out", str(tmp_path / "run")]) == 0
    assert float(capsys.readouterr().out.rsplit("val accuracy", 1)[1]) >= 0.8
    cfg_run, model, _ = load_run(tmp_path / "run")
    assert cfg_run.model.name == "bert" and model.pooling == "cls"
