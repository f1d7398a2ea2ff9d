"""``lmforge evaluate`` / ``predict`` (lmforge.tools.evaluate) on real tiny runs: each figure recomputed here
from the model and the data by another route (a plain loop, scikit-learn on predict's labels), the options,
the CLI's JSON, and the one-line errors."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.__main__ import main
from lmforge.data.labelled import load_labelled
from lmforge.data.shards import TokenData
from lmforge.errors import UserError
from lmforge.runs.loader import load_run
from lmforge.tools.evaluate import evaluate_run, predict_texts


def plain_lm_loss(run_dir, tokens: np.ndarray, block: int) -> tuple[float, int]:
    """Mean next-token cross-entropy over the non-overlapping windows that tile ``tokens``, one window at a time."""
    _, model, _ = load_run(run_dir)
    n_windows = (len(tokens) - 1) // block
    starts = np.linspace(0, len(tokens) - block - 1, n_windows).round().astype(np.int64)
    total, count = 0.0, 0
    with torch.no_grad():
        for s in starts:
            w = torch.from_numpy(tokens[s : s + block + 1].astype(np.int64))
            logits = model(w[None, :-1])[0]
            total += F.cross_entropy(logits.double(), w[1:], reduction="sum").item()
            count += block
    return total / count, count


def test_lm_figures_are_the_cross_entropy_of_its_val_split(runs):
    r = evaluate_run(runs / "lm")
    cfg, _, _ = load_run(runs / "lm")
    data = TokenData.load(runs / "lm" / "data")
    block = min(cfg.model.block_size, len(data.val) - 1)
    loss, scored = plain_lm_loss(runs / "lm", np.asarray(data.val), block)
    assert r["tokens"] == scored and r["loss"] == pytest.approx(loss, abs=2e-5)
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-4)
    counts = np.array(list(Counter(np.asarray(data.val).tolist()).values()), dtype=np.float64)
    p = counts / counts.sum()
    assert r["unigram_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-5)
    assert r["loss"] < r["unigram_entropy"]  # 40 steps learn more than the token frequencies
    per_char = len(data.val) / data.meta["val_chars"] / math.log(2)
    assert r["bits_per_char"] == pytest.approx(r["loss"] * per_char, abs=1e-3)
    assert r["data"] == f"{runs / 'lm'}/data (val)"


def test_lm_options_split_max_batches_and_other_text(runs, tmp_path):
    full = evaluate_run(runs / "lm")
    train = evaluate_run(runs / "lm", split="train")
    assert train["tokens"] > full["tokens"] and train["data"].endswith("(train)")
    block = load_run(runs / "lm")[0].model.block_size
    one = evaluate_run(runs / "lm", split="train", max_batches=1)
    assert one["tokens"] == 8 * block < train["tokens"]  # one batch of 8 windows, spread over the split
    # A text file of the user's: its own val split, through the run's tokenizer
    text = tmp_path / "other.txt"
    text.write_text("the king and queen walk to the castle at night.\n" * 60, encoding="utf-8")
    other = evaluate_run(runs / "lm", data=str(text))
    assert other["data"] == f"{text} (val)" and other["tokens"] > 0 and math.isfinite(other["loss"])
    assert other["loss"] != full["loss"]


def test_classifier_figures_agree_with_its_predictions(runs, labelled):
    from sklearn.metrics import f1_score

    r = evaluate_run(runs / "clf")
    cfg, _, _ = load_run(runs / "clf")
    d = load_labelled(str(labelled), "val", "text", "label", cfg.finetune.label_names)
    pred = [cfg.finetune.label_names.index(label) for label, _, _ in predict_texts(runs / "clf", d.texts)]
    assert r["examples"] == len(d) > 0 and r["labels"] == ["negative", "positive"]
    assert r["accuracy"] == pytest.approx(np.mean(np.array(pred) == np.array(d.labels)), abs=1e-5)
    assert r["macro_f1"] == pytest.approx(f1_score(d.labels, pred, average="macro"), abs=1e-5)
    conf = np.array(r["confusion"])
    assert conf.sum() == len(d) and np.trace(conf) / len(d) == pytest.approx(r["accuracy"], abs=1e-5)
    assert [r["per_class"][n]["support"] for n in r["labels"]] == conf.sum(1).tolist()
    assert r["accuracy"] > 0.6  # 40 steps from the pretrained base learn the 'bread' / 'sing' rule in part at least


def test_classifier_on_another_file_with_other_columns(runs, tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("review,stars\npeople sing of bread,positive\nthe king walks at night,negative\n"
                 "the queen and bread,positive\n", encoding="utf-8")
    r = evaluate_run(runs / "clf", data=str(f), split="test", text_column="review", label_column="stars")
    assert r["examples"] == 3 and np.array(r["confusion"]).sum() == 3 and r["data"] == str(f)
    lstm = evaluate_run(runs / "lstm", data=str(f), split="test", text_column="review", label_column="stars")
    assert lstm["examples"] == 3 and 0.0 <= lstm["accuracy"] <= 1.0


def test_predict_is_the_argmax_and_reads_an_input_file(runs, tmp_path):
    texts = ["people sing of bread", "the king and queen walk"]
    out = predict_texts(runs / "clf", texts)
    assert [t for _, _, t in out] == texts and all(0.5 <= p <= 1.0 for _, p, _ in out)
    f = tmp_path / "in.tsv"
    f.write_text("text\n" + "\n".join(texts) + "\n", encoding="utf-8")
    assert predict_texts(runs / "clf", [], input_file=str(f)) == out


def test_cli_json_is_the_api_result(runs, tmp_path, capsys):
    assert main(["evaluate", str(runs / "clf"), "--json", str(tmp_path / "e.json")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text()) == evaluate_run(runs / "clf")


@pytest.mark.parametrize("call, needle", [
    (lambda runs: evaluate_run(runs / "lm", max_batches=0), "--max-batches"),
    (lambda runs: evaluate_run(runs / "lm", data="  "), "--data: expected a data set name"),
    (lambda runs: evaluate_run(runs / "lm", split="test"), "--split test"),
    (lambda runs: predict_texts(runs / "lm", ["a text"]), "not a fine-tuned classifier"),
    (lambda runs: predict_texts(runs / "clf", []), "no text given"),
    (lambda runs: evaluate_run(runs / "nowhere"), "nowhere"),
])
def test_bad_requests_are_one_line_user_errors(runs, call, needle):
    with pytest.raises(UserError) as e:
        call(runs)
    assert needle in str(e.value) and "\n" not in str(e.value)
