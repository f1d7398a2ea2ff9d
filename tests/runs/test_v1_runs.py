"""Run dirs written by an older lmforge (tests/fixtures/v1_runs, made at commit efefa6e) still load,
evaluate to the figures they gave then, and serve predictions: a change of layout must not strand them."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from helpers import REPO

from lmforge.runs.loader import load_run
from lmforge.tools.evaluate import evaluate_run, predict_texts

FIXTURE = REPO / "tests" / "fixtures" / "v1_runs"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A copy (nothing is written into the repo), entered: the runs name their data and base relative to it."""
    copy = tmp_path / "v1_runs"
    shutil.copytree(FIXTURE, copy)
    monkeypatch.chdir(copy)
    return copy


def same(got, want, path=""):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-5), (path, got, want)
    else:
        assert got == want, (path, got, want)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_old_run_dir_evaluates_to_its_old_figures(runs, name):
    got = evaluate_run(name) if name == "lm" else evaluate_run(name, data="test.tsv")
    same(got, EXPECTED[name], name)


@pytest.mark.parametrize("name", ["clf", "lora", "int8"])
def test_an_old_classifier_predicts(runs, name):
    cfg, model, tok = load_run(name)
    assert cfg.finetune.label_names == ["negative", "positive"]
    rows = list(predict_texts(name, ["people sing of bread", "the king walks"], None, "text"))
    assert [r[2] for r in rows] == ["people sing of bread", "the king walks"]
    assert all(r[0] in ("negative", "positive") and 0.5 <= r[1] <= 1.0 for r in rows)
