"""`lmforge compress` on a translation run: int8 gives a loadable run dir that translates like the float run,
with BLEU in compression.json for both and a smaller size; pruning is unstructured only (the rest is refused)."""

from __future__ import annotations

import json

import pytest
from helpers import make_pairs, translation_recipe

pytest.importorskip("sacrebleu")

from lmforge.__main__ import main  # noqa: E402
from lmforge.recipes.train import train  # noqa: E402
from lmforge.runs import loader  # noqa: E402
from lmforge.tools.compress import compress  # noqa: E402
from lmforge.tools.translate import translate_run  # noqa: E402

TEXTS = ["我们明天去北京。", "你好。", "他喜欢喝茶。", "我们去学校。"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ct")
    train(translation_recipe(tmp, make_pairs(tmp / "p.tsv")), out=tmp / "run", progress=False)
    return tmp / "run"


@pytest.fixture(scope="module")
def int8_run(run):
    out = run.parent / "int8"
    report = compress(run, "int8", out, repeats=1, progress=False)
    return out, report


def test_int8_translation_run(run, int8_run):
    out, report = int8_run
    cfg, model, _ = loader.load_run(out)
    assert cfg.compress.quantize == "int8" and cfg.task == "translate"
    from lmforge.models.quantize import Int8Linear

    assert any(isinstance(m, Int8Linear) for m in model.modules())
    val = [line.split("\t")[0] for line in (run / "data" / "val.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    texts = TEXTS + val[:12]
    float_out, int8_out = translate_run(run, texts, beam=1), translate_run(out, texts, beam=1)
    assert sum(a == b for a, b in zip(float_out, int8_out)) >= 0.75 * len(texts), (float_out, int8_out)
    saved = json.loads((out / "compression.json").read_text(encoding="utf-8"))
    assert saved["metric"]["bleu"] == report["metric"]["bleu"]
    for r in (saved, saved["original"]):
        assert isinstance(r["metric"]["bleu"], float) and isinstance(r["metric"]["chrf"], float)
        assert r["latency_ms_b1"] > 0 and r["latency_ms_b32"] > 0 and r["decode_ms_per_sentence_b32"] > 0
    assert saved["size_mb"] < saved["original"]["size_mb"] and saved["delta"]["size_ratio"] > 1.5
    assert 0.5 <= saved["greedy_agreement"] <= 1.0
    assert "bleu" in (out / "compression.md").read_text(encoding="utf-8")
    assert (out / "data" / "val.tsv").is_file()  # `evaluate` of the int8 run reads its own pairs
    from lmforge.tools.evaluate import evaluate_run

    assert evaluate_run(out, split="val")["bleu"] == saved["metric"]["bleu"]


def test_prune_translation_run(run, tmp_path, capsys):
    report = compress(run, "prune", tmp_path / "pruned", sparsity=0.5, repeats=1, progress=False)
    assert report["params_nonzero"] < 0.8 * report["original"]["params_nonzero"]
    assert "bleu" in report["metric"] and "bleu" in report["original"]["metric"]
    assert translate_run(tmp_path / "pruned", TEXTS[:2], beam=1)
    for extra, flag in ((["--structured", "heads"], "--structured heads"), (["--recover-steps", "4"], "--recover-steps")):
        assert main(["compress", str(run), "--method", "prune", "--sparsity", "0.5", "--out", str(tmp_path / "x"),
                     *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and "translation run" in err, err
        assert not (tmp_path / "x").exists()
