"""Task ``translate`` end to end on a tiny generated zh -> en set: `lmforge train` (Transformer and LSTM
baseline), the best-BLEU checkpoint, exact resume, `translate`, `evaluate` (BLEU / chrF / signature) and
the bad inputs of the issue (one line, exit 2, nothing saved damaged)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, make_corpus, make_pairs, translation_recipe, tree_digest
from safetensors.torch import load_file

from lmforge.__main__ import main
from lmforge.recipes.train import train

pytest.importorskip("sacrebleu")

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("translate")
    data = make_pairs(tmp / "pairs.tsv")
    summary = train(translation_recipe(tmp, data), out=tmp / "run", progress=False)
    return tmp, data, summary


def test_train_writes_a_translation_run_that_learns(trained):
    tmp, _, s = trained
    run = tmp / "run"
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "best.safetensors", "train_state.safetensors",
                 "data/train.tsv", "data/val.tsv"):
        assert (run / name).exists(), name
    assert "task: translate" in (run / "config.yaml").read_text()
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_loss = [r["loss"] for r in recs if r["split"] == "train"]
    assert train_loss[-1] < train_loss[0] - 1.0
    vals = [r for r in recs if r["split"] == "val"]
    assert [v["step"] for v in vals] == [20, 40] and all("bleu" in v and "chrf" in v for v in vals)
    assert s["val_bleu"] == vals[-1]["bleu"]


def test_resume_is_exact(trained, tmp_path):
    tmp, data, _ = trained
    short = translation_recipe(tmp_path, data, steps=20)
    train(short, out=tmp_path / "r", progress=False)
    train(resume=tmp_path / "r", overrides={"train.max_steps": "40"}, progress=False)
    a, b = load_file(tmp / "run" / "model.safetensors"), load_file(tmp_path / "r" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_translate_and_evaluate(trained, tmp_path, capsys):
    tmp, data, _ = trained
    run = str(tmp / "run")
    assert main(["translate", run, "我喜欢猫。", "他去北京。", "--beam", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.strip() for line in lines)
    (tmp_path / "in.txt").write_text("我喜欢猫。\n\n他去北京。\n", encoding="utf-8")
    assert main(["translate", run, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt")]) == 0
    out = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert len(out) == 3 and out[1] == "" and out[0] == lines[0] and capsys.readouterr().out == ""
    assert main(["evaluate", run, "--split", "val", "--json", str(tmp_path / "e.json")]) == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert {"bleu", "chrf", "signature", "loss"} <= r.keys() and "BLEU" in r["signature"] and r["bleu"] >= 0
    assert main(["evaluate", run, "--data", str(data), "--source-column", "zh", "--target-column", "en", "--beam", "1",
                 "--max-batches", "1", "--json", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["sentences"] == 32


def test_best_weights_are_what_translate_and_evaluate_best_use(trained, tmp_path, capsys):
    from lmforge.runs.loader import load_run

    tmp, _, _ = trained
    run = tmp / "run"
    best = load_file(run / "best.safetensors")
    _, model, _ = load_run(run, best=True)
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items() if k in best)
    assert main(["translate", str(run), "我喜欢猫。", "--best"]) == 0 and capsys.readouterr().out.count("\n") == 1
    assert main(["evaluate", str(run), "--best", "--split", "val", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["bleu"] >= 0
    lone = tmp_path / "lone"  # a run trained without train.keep_best
    import shutil

    shutil.copytree(run, lone)
    (lone / "best.safetensors").unlink()
    assert main(["evaluate", str(lone), "--best"]) == 2
    assert "no best.safetensors (the run was trained without train.keep_best)" in capsys.readouterr().err


def test_lstm_baseline_and_token_batches_train_through_the_same_task(trained, tmp_path):
    _, data, _ = trained
    s = train(translation_recipe(tmp_path, data, name="lstm_seq2seq", steps=20, bt=400), out=tmp_path / "lstm", progress=False)
    assert s["steps"] == 20 and s["val_loss"] < 6 and "val_bleu" in s


def test_train_dispatches_other_tasks_to_their_recipes(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", lines=60)
    s = train(TINY, {"data.path": str(corpus), "train.max_steps": "2", "train.eval_interval": "0"}, out=tmp_path / "lm",
              progress=False)
    assert s["steps"] == 2 and "task: lm" in (tmp_path / "lm" / "config.yaml").read_text()


def one_line(capsys, argv, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], (argv, err)


def test_bad_inputs(trained, tmp_path, capsys):
    tmp, data, _ = trained
    run = str(tmp / "run")
    before = tree_digest(tmp / "run")
    one_line(capsys, ["translate", run, "x", "--beam", "0"], "--beam")
    one_line(capsys, ["translate", run, "x", "--beam", "100000"], "larger than the vocabulary")
    one_line(capsys, ["translate", run], "no text given")
    one_line(capsys, ["evaluate", run, "--split", "test"], "no test pairs")
    (tmp_path / "one.tsv").write_text("zh\n我\n", encoding="utf-8")
    one_line(capsys, ["train", "--config", translation_recipe(tmp_path, tmp_path / "one.tsv"), "--out", str(tmp_path / "o")],
             "one.tsv:1: no column 'en'")
    (tmp_path / "empty.tsv").write_text("zh\ten\n我\t\n", encoding="utf-8")
    one_line(capsys, ["train", "--config", translation_recipe(tmp_path, tmp_path / "empty.tsv"), "--out", str(tmp_path / "o")],
             "empty.tsv:2: empty target")
    long = make_pairs(tmp_path / "long.tsv")
    with open(long, "a", encoding="utf-8") as f:
        f.write("我" * 80 + "。\tI .\n")
    one_line(capsys, ["train", "--config", translation_recipe(tmp_path, long), "--translate.too_long=refuse",
                      "--out", str(tmp_path / "o")],
             "long.tsv:302: source has")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    lm = tmp_path / "lm"
    assert main(["pretrain", "--config", TINY, "--data.path", str(make_corpus(tmp_path / "c.txt", lines=60)),
                 "--train.max_steps=1", "--train.eval_interval=0", "--out", str(lm)]) == 0
    capsys.readouterr()
    one_line(capsys, ["translate", str(lm), "x"], "not a translation model")
    assert tree_digest(tmp / "run") == before


@pytest.mark.data
def test_the_recipe_trains_on_hsk_zh_en(tmp_path, capsys):
    """configs/translate-zh-en.yaml on the real pairs, a few steps of a narrower model (the CLI contract's spellings)."""
    from helpers import REPO

    assert main(["data", "get", "hsk-zh-en"]) == 0
    assert "pairs" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "configs" / "translate-zh-en.yaml"), "--model.n_embd=32", "--model.n_layer=1",
                 "--model.decoder_layers=1", "--data.vocab_size=600", "--train.max_steps=3", "--train.eval_interval=3",
                 "--translate.eval_sentences=4", "--out", str(run)]) == 0
    assert main(["translate", str(run), "我们明天去北京。", "--beam", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()[-1:]) == 1
    assert main(["evaluate", str(run), "--split", "test", "--max-batches", "1", "--json", str(tmp_path / "t.json")]) == 0
    assert {"bleu", "chrf", "signature"} <= json.loads((tmp_path / "t.json").read_text()).keys()
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0  # post-LN: Marian's layout
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["MarianMTModel"]
