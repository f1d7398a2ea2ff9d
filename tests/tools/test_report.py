"""`lmforge report RUN [RUN ...] --out report.html`: one self-contained page with each run's curves, evaluation
and worst errors, a comparison of several runs and the compression plot of compressed ones."""

from __future__ import annotations

import re

import pytest
from helpers import assert_one_line_errors

from lmforge.__main__ import main

pytest.importorskip("matplotlib")


def test_report_of_a_classifier_a_language_model_and_a_compressed_run(runs, tmp_path, capsys):
    q = tmp_path / "clf-int8"
    assert main(["compress", str(runs / "clf"), "--method", "int8", "--out", str(q), "--repeats", "1"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(runs / "clf"), str(runs / "lm"), str(q), "--out", str(out), "--errors", "2"]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count('class="run"') == 3
    for needle in ("comparison", "compression", "worst errors", "per class", "confusion", "perplexity", "config.yaml"):
        assert needle in page, needle
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 3  # the two trained runs' curves, the compression plot
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page
    capsys.readouterr()


def test_report_compress_still_writes_its_plot(runs, tmp_path):
    q = tmp_path / "lm-int8"
    assert main(["compress", str(runs / "lm"), "--method", "int8", "--out", str(q), "--repeats", "1"]) == 0
    assert main(["report", "compress", str(q), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_report_bad_input(runs, tmp_path, capsys):
    cases = [
        (["report", str(runs / "clf"), "--out", str(tmp_path / "r.png")], "expected an .html file"),
        (["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html")], "nothing"),
        (["report", str(runs / "clf"), "--errors", "-1", "--out", str(tmp_path / "r.html")], "--errors -1"),
        (["report", "compress", "--out", str(tmp_path / "p.png")], "at least one RUN"),
    ]
    assert_one_line_errors(main, cases, tmp_path, capsys)
