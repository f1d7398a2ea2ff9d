"""Pages checked in a real headless Chromium (tests/helpers/browser.py): the `lmforge explain` and `report` pages and the
server's /docs render, log nothing to the console and fetch nothing from the network."""

from __future__ import annotations

import pytest
from helpers.browser import assert_looks_right, visit

pytest.importorskip("PIL")


@pytest.mark.slow
def test_explain_page_renders_offline(tmp_path):
    pytest.importorskip("captum")
    from helpers import TINY, make_corpus, make_labelled

    from lmforge.__main__ import main

    corpus = make_corpus(tmp_path / "corpus.txt")
    with open(corpus, "a") as f:
        f.write("people sing of bread\n" * 20)
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.max_steps=20", "--out", str(tmp_path / "lm")]) == 0
    data = make_labelled(tmp_path / "train.tsv")
    assert main(["finetune", "--base", str(tmp_path / "lm"), "--finetune.data", str(data), "--train.max_steps=20",
                 "--train.eval_interval=0", "--out", str(tmp_path / "clf")]) == 0
    page = tmp_path / "why.html"
    assert main(["explain", str(tmp_path / "clf"), "the people sing of bread", "国王 走 到 城堡", "--out", str(page)]) == 0
    assert_looks_right(visit(page.as_uri(), tmp_path / "shot"))


@pytest.mark.slow
def test_server_docs_render_offline(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("fastapi_offline")
    from helpers.serve import make_runs, running

    from lmforge.tools.serve.app import create_app
    from lmforge.tools.serve.registry import load_models

    runs = make_runs(tmp_path / "runs")
    models = load_models([str(runs["clf-gpt"])])
    with running(create_app(models)) as url:
        v = visit(url + "/docs", tmp_path / "shot", budget_ms=6000)
    assert_looks_right(v)


@pytest.mark.slow
def test_report_page_renders_offline(tmp_path):
    pytest.importorskip("matplotlib")
    from helpers import TINY, make_corpus, make_labelled

    from lmforge.__main__ import main

    corpus = make_corpus(tmp_path / "corpus.txt")
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.max_steps=20", "--out", str(tmp_path / "lm")]) == 0
    data = make_labelled(tmp_path / "train.tsv")
    assert main(["finetune", "--base", str(tmp_path / "lm"), "--finetune.data", str(data), "--train.max_steps=20",
                 "--train.eval_interval=10", "--out", str(tmp_path / "clf")]) == 0
    page = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "clf"), str(tmp_path / "lm"), "--out", str(page)]) == 0
    assert_looks_right(visit(page.as_uri(), tmp_path / "shot", size=(1300, 1600)))
