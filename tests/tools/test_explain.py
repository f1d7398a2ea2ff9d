"""`lmforge explain` on a tiny GPT classifier trained where one token decides the label ("bread": positive):
integrated gradients add up to the probability change within their convergence delta, both methods rank the
planted token first, the page and the JSON are written, faithfulness beats random, and bad input is one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import TINY, assert_one_line_errors, make_corpus

from lmforge.__main__ import main
from lmforge.runs.loader import load_run
from lmforge.tools.explain.attribution import explain_text

pytest.importorskip("captum")
WORDS = "the king and queen walk to the castle at night while people rain sing".split()


def planted(path: Path, n: int, seed: int) -> Path:
    """positive iff the sentence holds 'bread'."""
    rng = random.Random(seed)
    rows = ["text\tlabel"]
    for i in range(n):
        ws = [rng.choice(WORDS) for _ in range(rng.randint(5, 10))]
        if i % 2 == 0:
            ws.insert(rng.randint(0, len(ws)), "bread")
        rows.append(" ".join(ws) + f"\t{'positive' if i % 2 == 0 else 'negative'}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    corpus = make_corpus(tmp / "corpus.txt")
    with open(corpus, "a") as f:
        f.write("people sing of bread\n" * 20)
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.max_steps=40", "--out", str(tmp / "lm")]) == 0
    data, test = planted(tmp / "train.tsv", 240, 0), planted(tmp / "test.tsv", 60, 1)
    assert main(["finetune", "--base", str(tmp / "lm"), "--finetune.data", str(data), "--train.max_steps=80",
                 "--train.batch_size=16", "--train.lr=3e-3", "--train.eval_interval=0", "--train.save_interval=80",
                 "--out", str(tmp / "clf")]) == 0
    return tmp, test


def test_ig_adds_up_within_its_delta_and_finds_the_planted_token(clf):
    tmp, _ = clf
    cfg, model, tok = load_run(tmp / "clf")
    texts = ["the queen walk bread to the castle at night", "people bread rain and the king sing"]
    for text in texts:
        e = explain_text(model, tok, text, cfg.classifier_max_length, "ig")
        assert cfg.finetune.label_names[e.target] == "positive" and e.probs[e.target] > 0.8, e.probs
        x = e.extra
        assert x["converged"] and x["delta"] <= 0.01
        assert abs(sum(e.scores) - (e.probs[e.target] - x["baseline_prob"])) <= x["delta"] + 1e-4
        assert all(s == 0 for s, sp in zip(e.scores, e.special) if sp)
        for method in ("ig", "occlusion"):
            e = explain_text(model, tok, text, cfg.classifier_max_length, method)
            best = max(range(len(e.scores)), key=lambda i: e.scores[i])
            assert e.pieces[best].strip() == "bread", (method, list(zip(e.pieces, e.scores)))


def test_explain_writes_a_page_and_json(clf, tmp_path, capsys):
    tmp, _ = clf
    page, js = tmp_path / "why.html", tmp_path / "why.json"
    assert main(["explain", str(tmp / "clf"), "the king walk bread at night", "rain and queen", "--method", "ig",
                 "--out", str(page), "--json", str(js)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("positive\t") and "bread" in out[0]
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "bread" in html and "convergence delta" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html  # opens offline
    rows = json.loads(js.read_text())
    assert [r["predicted"] for r in rows] == ["positive", "negative"] and rows[0]["converged"]
    assert main(["explain", str(tmp / "clf"), "rain and queen", "--method", "occlusion", "--target", "positive",
                 "--json", str(js)]) == 0
    assert json.loads(js.read_text())[0]["target"] == "positive"


def test_faithfulness_beats_random(clf, tmp_path, capsys):
    tmp, test = clf
    js = tmp_path / "faith.json"
    assert main(["explain", str(tmp / "clf"), "--split", "test", "--data", str(test), "--faithfulness", "20",
                 "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert {"ig", "occlusion", "random"} <= r.keys() and r["ig"]["examples"] == 20
    for m in ("ig", "occlusion"):
        assert r[m]["comprehensiveness"] > 2 * max(r["random"]["comprehensiveness"], 0.01), r
        assert r[m]["sufficiency"] < r["random"]["sufficiency"], r
    assert r["ig_not_converged"] <= 2 and r["ig_delta_max"] < 0.05  # a sharp softmax may need more than 400 steps: reported


def test_explain_bad_input(clf, tmp_path, capsys):
    tmp, test = clf
    run = str(tmp / "clf")
    cases = [
        (["explain", run, "some text", "--method", "saliency", "--out", str(tmp_path / "a.html")], "--method saliency"),
        (["explain", run, "some text", "--target", "neutral", "--out", str(tmp_path / "a.html")], "--target 'neutral'"),
        (["explain", run, "some text"], "--out FILE.html"),
        (["explain", run, "some text", "--out", str(tmp_path / "a.txt")], ".html"),
        (["explain", run, "--out", str(tmp_path / "a.html")], "give the texts"),
        (["explain", run, "--split", "test", "--json", str(tmp_path / "f.json")], "--faithfulness N"),
        (["explain", str(tmp / "lm"), "some text", "--out", str(tmp_path / "a.html")], "text classifiers"),
    ]
    assert_one_line_errors(main, cases, tmp_path, capsys)


def test_explain_an_image_run(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    from lmforge.data.images import load_images
    from lmforge.recipes.train import train

    repo = Path(__file__).resolve().parents[2]
    run = tmp_path / "digits"
    train(str(repo / "configs" / "digits-cnn.yaml"), out=run, progress=False,
          overrides={"train.max_steps": "60", "train.eval_interval": "0", "train.save_interval": "60", "train.keep_best": ""})
    d = load_images("digits", "test")
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"d{i}.png"))
        Image.fromarray(d.images[i, 0].numpy()).save(files[-1])
    page, js = tmp_path / "why.html", tmp_path / "why.json"
    assert main(["explain", str(run), *files, "--method", "ig", "--out", str(page), "--json", str(js)]) == 0
    rows = json.loads(js.read_text())
    for r in rows:
        assert len(r["scores"]) == 8 and len(r["scores"][0]) == 8 and r["converged"]
        total = sum(map(sum, r["scores"]))
        assert abs(total - (r["probabilities"][r["target"]] - r["baseline_prob"])) <= r["delta"] + 1e-4
    assert (tmp_path / "why-0.png").read_bytes()[:4] == b"\x89PNG" and "data:image/png;base64," in page.read_text()
    assert main(["explain", str(run), files[0], "--method", "occlusion", "--target", "3", "--json", str(js)]) == 0
    assert json.loads(js.read_text())[0]["target"] == "3"
    capsys.readouterr()
