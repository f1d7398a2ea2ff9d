"""The benchmarks run end to end on tiny shapes (``--smoke``: 1 repeat, no compile) and print the JSON
that ``make bench`` collects. No timing is asserted: only the contract (keys, ratio = the smallest)."""

import importlib
import json
import sys

import pytest
from helpers import REPO

BENCH = REPO / "benchmarks"
COMMON = {"benchmark", "ratio", "ratios", "threads", "repeats", "torch", "cpu", "date", "foreign_cpus", "contended"}

pytest.importorskip("transformers")


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import _common

    monkeypatch.setattr(_common, "CACHE_DIR", tmp_path)  # a smoke run never touches runs/bench

    def load(name):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_peak_smoke(bench, capsys):
    out = bench("peak").main(["--smoke", "--threads", "1"])
    assert last_json(capsys) == out
    assert COMMON <= out.keys() and out["benchmark"] == "peak"
    assert all(out[k] > 0 for k in ("fp32_gflops", "bf16_gflops", "int8_gops", "mem_read_gbps"))


def test_train_smoke(bench, capsys):
    out = bench("train").main(["--smoke", "--threads", "1"])
    assert last_json(capsys) == out
    assert COMMON <= out.keys() and out["benchmark"] == "train"
    for mode in ("fp32", "bf16"):
        for who in ("lmforge", "transformers_sdpa", "transformers_eager"):
            assert out["tok_per_s"][f"{who}_{mode}"] > 0 and f"{who}_{mode}" in out["mfu"]
    assert out["ratio"] == min(out["ratios"]["fp32"], out["ratios"]["bf16"])


def test_generate_smoke(bench, capsys):
    out = bench("generate").main(["--smoke", "--threads", "1"])
    assert last_json(capsys) == out
    assert COMMON <= out.keys() and out["benchmark"] == "generate"
    assert set(out["results"]) == {"tiny_fp32", "tiny_bf16", "tiny_int8"}
    for r in out["results"].values():
        assert r["lmforge_tok_s"] > 0 and r["transformers_tok_s"] > 0 and r["bandwidth_bound_tok_s"] > 0
    assert out["results"]["tiny_fp32"]["same_tokens"]  # same weights, same greedy tokens as transformers
    assert out["ratio"] == min(out["ratios"].values())


def test_results_markdown(bench, capsys, tmp_path):
    peak = bench("peak").main(["--smoke", "--threads", "1"])
    other = {"benchmark": "speedrun", "ratio": 1.2, "ratios": {"a": 1.2}, "threads": 1, "seconds": 3.5}
    lines = tmp_path / "results.jsonl"
    lines.write_text("noise\n" + json.dumps(peak) + "\n" + json.dumps(other) + "\n")
    capsys.readouterr()
    md = bench("results").main([str(lines)])
    assert md.startswith("# Benchmark results") and "## peak" in md and "## speedrun" in md
    assert "memory read GB/s" in md and "| seconds | 3.500 |" in md


@pytest.mark.data
def test_encoder_smoke(bench, capsys):
    """MiniLM (fetched from PyPI) with a random head against transformers, onnxruntime on lmforge's ONNX export
    (fp32 and its int8) and the onnxruntime int8 reference."""
    out = bench("encoder").main(["--smoke", "--threads", "1"])
    assert last_json(capsys) == out
    assert COMMON <= out.keys() and out["benchmark"] == "encoder"
    assert all(v > 0 for v in out["seq_per_s"].values()) and not out["accuracy"]
    assert {"lmforge_fp32", "lmforge_int8", "transformers_fp32", "onnxruntime_int8_reference",
            "onnxruntime_fp32", "onnxruntime_int8"} <= out["seq_per_s"].keys()  # ORT on lmforge's own export too
    assert out["ratio"] == min(out["ratios"]["int8_vs_onnxruntime_int8"], out["ratios"]["fp32_vs_transformers_fp32"],
                               out["ratios"]["int8_vs_fp32"] / 2)


def test_speedrun_smoke(bench, capsys, tmp_path):
    """Both sides train on a generated corpus (no network); lmforge's time is null exactly when not reached."""
    from helpers import make_corpus

    corpus = make_corpus(tmp_path / "corpus.txt", lines=600)
    out = bench("speedrun").main(["--smoke", "--threads", "1", "--data", str(corpus)])
    assert last_json(capsys) == out
    assert COMMON <= out.keys() and out["benchmark"] == "speedrun"
    ref, ours = out["reference"], out["lmforge"]
    assert ref["curve"] and ours["curve"] and out["ref_val_loss"] == ref["curve"][-1][1] > 0
    assert ref["tok_per_s"] > 0 and ours["tok_per_s"] > 0 and out["ref_seconds"] >= 3.0
    if out["reached"]:
        assert ours["curve"][-1][1] <= out["ref_val_loss"] and out["ratio"] == round(out["ref_seconds"] / out["lmforge_seconds"], 3)
    else:
        assert out["lmforge_seconds"] is None and out["ratio"] == 0
    again = bench("speedrun").main(["--smoke", "--threads", "1", "--data", str(corpus), "--reuse-ref"])
    assert again["reference"].pop("reused").endswith(".json") and again["reference"] == ref  # the kept run, not a new one
    md = bench("results").render([out])
    assert "## speedrun" in md and "Time to the reference's loss" in md and "| field | value |" not in md
    assert out["ratios"] == {"time_to_ref_loss": out["ratio"]}
    assert len(list((tmp_path / "speedrun").glob("*/tokenizer.json"))) == 1  # one tokenizer, in the (patched) cache


def test_profiles_smoke(bench, capsys):
    out = bench("profiles").main(["--smoke", "--threads", "1", "--steps", "1"])
    assert last_json(capsys) == out and out["benchmark"] == "profiles"
    step = out["train_fp32_lmforge"]
    assert step["ms_per_step"] > 0 and step["shares"]["matmul"] > 0 and step["top_ops"]
    assert sum(step["shares"].values()) == pytest.approx(1.0, abs=0.02)  # every microsecond in one category
    assert out["decode_tiny_fp32_transformers"]["ms_per_token"] > 0


def test_encoder_layouts_smoke(bench):
    out = bench("encoder_layouts").main(["--steps", "50", "--threads", "1"])
    assert set(out["layouts"]) == {"post-LN, learned (BERT)", "post-LN, rope", "pre-LN, learned", "pre-LN, rope"}
    assert all(set(r["accuracy"]) == {50} and 0.0 <= r["accuracy"][50] <= 1.0 for r in out["layouts"].values())


def test_error_audit_samples_then_summarises_a_classifiers_errors(bench, tmp_path, capsys):
    from helpers import make_labelled

    from lmforge.__main__ import main as cli

    data = make_labelled(tmp_path / "set.tsv", n=120)
    run = tmp_path / "clf"  # an LSTM trained 3 steps: plenty of errors
    assert cli(["finetune", "--finetune.data", str(data), "--model.name=lstm", "--model.n_embd=16", "--model.n_layer=1",
                "--data.vocab_size=300", "--train.max_steps=3", "--train.eval_interval=0", "--out", str(run)]) == 0
    audit = bench("error_audit")
    capsys.readouterr()
    audit.main(["sample", str(run), "--n", "10", "--split", "val"])
    tsv = capsys.readouterr().out
    lines = tsv.splitlines()
    assert lines[0].split("\t") == audit.FIELDS and len(lines) == 11
    rows = [ln.split("\t") for ln in lines[1:]]
    assert all(float(r[2]) < 0.5 for r in rows)  # each is an error: its own label got less than half

    cats = ["label", "none", "model", "model", "none"] * 2
    (tmp_path / "a.tsv").write_text(lines[0] + "\n" + "\n".join("\t".join([*r[:3], c, r[4]]) for r, c in zip(rows, cats))
                                    + "\n", encoding="utf-8")
    out = audit.main(["summary", str(tmp_path / "a.tsv"), str(run), "--split", "val", "--target", "1.0"])
    assert out["counts"] == {"label": 2, "none": 4, "model": 4} and out["share"]["model"] == 0.4
    n, e = out["examples"], out["errors"]
    assert out["accuracy"] == round(1 - e / n, 4)
    assert out["ceiling_fixing_model_errors"] == round(1 - e / n + 0.4 * e / n, 4)
    assert out["model_errors_to_fix_for_target"] == round(1 / 0.4, 3)  # 100% needs more than every model error
    buckets = out["accuracy_by_length"]
    assert sum(b["examples"] for b in buckets.values()) == n
    assert sum(round(b["accuracy"] * b["examples"]) for b in buckets.values() if b["examples"]) == n - e

    from lmforge.errors import UserError

    bad = tmp_path / "bad.tsv"
    bad.write_text(lines[0] + "\n" + "\t".join([*rows[0][:3], "maybe", rows[0][4]]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.tsv:2: category 'maybe'"):
        audit.main(["summary", str(bad), str(run), "--split", "val"])


def test_translate_smoke(bench, capsys):
    pytest.importorskip("sacrebleu")
    out = bench("translate").main(["--smoke", "--threads", "1"])
    assert last_json(capsys) == out
    assert COMMON <= out.keys() and out["benchmark"] == "translate"
    for side in ("lmforge", "marian"):
        curve = out[side]  # training seconds and steps only grow; the first point can be a few ms in
        assert curve and all(p["seconds"] >= 0 and 0 <= p["bleu"] <= 100 for p in curve)
        assert all(a["seconds"] < b["seconds"] and a["steps"] < b["steps"] for a, b in zip(curve, curve[1:]))
    assert out["lmforge"][-1]["seconds"] >= out["budget_s"] - 1 and out["test_sentences"] > 0


def test_translate_decode_smoke(bench, capsys):
    pytest.importorskip("sacrebleu")
    out = bench("translate_decode").main(["--smoke", "--threads", "1"])
    assert last_json(capsys) == out and COMMON <= out.keys() and out["benchmark"] == "translate_decode"
    for k in ("lmforge_beam5", "lmforge_greedy", "hf_greedy_one", "hf_beam5"):
        assert out[k]["seconds"] > 0 and 0 <= out[k]["bleu"] <= 100
    n = out["test_sentences"]
    assert n > 0 and out["greedy_outputs_identical"] == f"{n}/{n}"  # the same weights decode the same greedy tokens
    assert out["ratio"] == out["ratios"]["lmforge_beam5_vs_hf_greedy_one"] > 0


def test_translate_profile_smoke(bench, capsys):
    out = bench("translate_profile").main(["--smoke", "--threads", "1"])
    assert last_json(capsys) == out and out["benchmark"] == "translate_profile"
    assert out["steps_per_s"] > 0 and out["gflop_per_step"] > 0 and 0 < sum(out["op_shares"].values()) <= 1.0001
    assert any(k in out["op_shares"] for k in ("aten::mm", "aten::addmm", "aten::bmm"))  # the products are profiled


def test_vision_smoke(bench, capsys):
    out = bench("vision").main(["--smoke", "--threads", "1"])
    assert last_json(capsys) == out
    assert COMMON <= out.keys() and out["benchmark"] == "vision" and out["model"] == "cnn"
    assert out["lmforge_images_per_s"] > 0 and out["plain_images_per_s"] > 0 and out["ratio"] > 0


def test_image_robustness_smoke(bench, capsys, tmp_path):
    from lmforge.recipes.train import train

    run = tmp_path / "digits"
    train(str(REPO / "configs" / "digits-cnn.yaml"), out=run, progress=False,
          overrides={"train.max_steps": "30", "train.eval_interval": "0", "train.save_interval": "30", "train.keep_best": ""})
    out = bench("image_robustness").main([str(run), "--threads", "1", "--out", str(tmp_path / "shifted.npz")])
    assert last_json(capsys) == out
    assert COMMON <= out.keys() and out["benchmark"] == "image_robustness"
    r = out["runs"][str(run)]
    assert 0 <= r["shifted_accuracy"] <= 1 and 0 < r["test_accuracy"] <= 1 and out["shifted"]["images"] > 100
    import numpy as np

    with np.load(tmp_path / "shifted.npz") as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape[1:] == (8, 8, 1) and len(z["labels"]) == out["shifted"]["images"]
