"""``lmforge export``: ONNX (checked in onnxruntime) and Hugging Face folders (checked in ``transformers``)
for every model kind, on tiny run dirs made here (random weights, no training); errors write nothing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tree_digest

from lmforge.__main__ import main
from lmforge.config import FinetuneConfig, ModelConfig, RunConfig, save_config
from lmforge.errors import UserError
from lmforge.models import build
from lmforge.runs.files import save_weights
from lmforge.runs.loader import load_run
from lmforge.tasks.classify import build_classifier
from lmforge.tokenizer import train_tokenizer
from lmforge.tools import export as ex

ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

TEXTS = ["the king and queen walk to the castle at night", "people sing of bread and rain", "春天 来了 我们 一起 去 北京"]
KINDS = {  # name -> (model config fields, finetune config fields or None for a language model)
    "gpt": (dict(name="gpt"), None),
    "gpt-odd": (dict(name="gpt", pos_emb="sinusoidal", tie_weights=False, bias=False), None),
    "bert": (dict(name="bert"), None),
    "bert-odd": (dict(name="bert", pos_emb="sinusoidal", tie_weights=False), None),
    "bert-pre-rope": (dict(name="bert", norm_first=True, pos_emb="rope"), None),  # ELECTRA's encoder layout
    "bert-pre-rope-clf": (dict(name="bert", norm_first=True, pos_emb="rope"), dict(pooling="concat")),
    "gpt-clf": (dict(name="gpt"), dict(pooling="last")),
    "gpt-clf-mean": (dict(name="gpt"), dict(pooling="mean")),
    "gpt-clf-cls": (dict(name="gpt"), dict(pooling="cls")),
    "bert-clf": (dict(name="bert"), dict(pooling="cls")),
    "lstm": (dict(name="lstm"), dict(pooling="auto")),
}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 10, vocab_size=300)


def make_run(folder, tok, kind: str, seed: int = 0):
    """A run dir (config.yaml, tokenizer.json, model.safetensors) with random, perturbed weights."""
    model_kw, ft_kw = KINDS[kind]
    mcfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=16, **model_kw)
    ft = FinetuneConfig(labels="neg,neutral,pos", **ft_kw) if ft_kw is not None else FinetuneConfig()
    torch.manual_seed(seed)
    model = build(mcfg) if ft_kw is None else build_classifier(mcfg, ft, 3, tok.pad_id)
    with torch.no_grad():  # non-zero biases and LayerNorms everywhere, so a wrong map cannot hide
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(save_config(RunConfig(model=mcfg, finetune=ft)), encoding="utf-8")
    tok.save(folder / "tokenizer.json")
    save_weights(folder / "model.safetensors", model)
    return folder


def padded_batch(tok, names, B=4, T=10, seed=5):
    """Random ids (B, T), right-padded rows with the tokenizer's pad id when a mask is named."""
    return ex.sample_inputs(names, tok.vocab_size, tok.pad_id, B, T, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["gpt", "bert", "gpt-clf", "gpt-clf-mean", "gpt-clf-cls", "bert-clf", "lstm",
                                  "bert-pre-rope", "bert-pre-rope-clf"])
def test_onnx_matches_pytorch_with_dynamic_axes(tmp_path, tok, kind):
    run = make_run(tmp_path / "run", tok, kind)
    before = tree_digest(run)
    info = ex.export_run(run, "onnx", tmp_path / "out")
    out = tmp_path / "out"
    assert tree_digest(run) == before  # the run dir is only read
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "export.json", "model.onnx", "tokenizer.json"]
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(info))
    assert info["max_abs_diff"] < 1e-4 and info["opset"] == 17 and len(info["shapes_checked"]) == 2
    assert info["onnx_bytes"] == (out / "model.onnx").stat().st_size
    assert (out / "config.yaml").read_bytes() == (run / "config.yaml").read_bytes()
    names = ["input_ids"] if kind in ("gpt", "gpt-clf-cls") else ["input_ids", "attention_mask"]
    assert info["inputs"] == names
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names
    assert all(i.shape == ["batch", "sequence"] for i in session.get_inputs())
    _, model, _ = load_run(run)
    feed = padded_batch(tok, names)  # a third shape, neither traced nor checked by the export
    got = session.run(None, {k: v.numpy() for k, v in feed.items()})[0]
    with torch.no_grad():
        ref = ex._Logits(model, names)(**feed)
    torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["gpt", "gpt-odd"])
def test_hf_gpt_lm_loads_in_transformers_with_equal_logits(tmp_path, tok, kind):
    run = make_run(tmp_path / "run", tok, kind)
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    _, model, _ = load_run(run)
    ids = padded_batch(tok, ["input_ids"])["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert [hf_tok(t)["input_ids"] for t in TEXTS] == [tok.encode(t) for t in TEXTS]
    assert hf_tok.pad_token_id == tok.pad_id and hf_tok.eos_token_id == tok.eos_id
    info = json.loads((tmp_path / "hf" / "export.json").read_text())
    assert info["hf_class"] == "GPT2LMHeadModel" and info["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("kind", ["bert", "bert-odd"])
def test_hf_bert_mlm_and_encoder_load_with_equal_outputs(tmp_path, tok, kind):
    run = make_run(tmp_path / "run", tok, kind)
    ex.export_run(run, "hf", tmp_path / "hf")
    _, model, _ = load_run(run)
    feed = padded_batch(tok, ["input_ids", "attention_mask"])
    keep = feed["attention_mask"].bool()
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    encoder = transformers.BertModel.from_pretrained(tmp_path / "hf").eval()  # the pooler is new: unused here
    with torch.no_grad():
        torch.testing.assert_close(mlm(**feed).logits[keep], model(feed["input_ids"], feed["attention_mask"])[keep], atol=1e-4, rtol=0)
        torch.testing.assert_close(encoder(**feed).last_hidden_state[keep], model.bert(feed["input_ids"], feed["attention_mask"])[keep],
                                   atol=1e-4, rtol=0)


def test_hf_gpt_classifier_predicts_like_lmforge(tmp_path, tok):
    from lmforge.tasks.classify import predict_proba

    run = make_run(tmp_path / "run", tok, "gpt-clf")
    info = ex.export_run(run, "hf", tmp_path / "hf")
    assert info["hf_class"] == "GPT2ForSequenceClassification" and "ln_f" in info["note"]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label == {0: "neg", 1: "neutral", 2: "pos"} and hf.config.pad_token_id == tok.pad_id
    _, model, _ = load_run(run)
    feed = padded_batch(tok, ["input_ids", "attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(hf(**feed).logits, model(**{"idx": feed["input_ids"], "attention_mask": feed["attention_mask"]}),
                                   atol=1e-4, rtol=0)
    # texts end to end: the HF tokenizer frames them bos ... eos and pads as lmforge does
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = ["the king", "people sing of bread", "rain"]  # within block_size (16) once framed
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"][1].tolist() == tok.encode(texts[1], add_special_tokens=True)
    with torch.no_grad():
        torch.testing.assert_close(hf(**batch).logits.softmax(-1), predict_proba(model, tok, texts, 16), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind, words", [("lstm", "LSTM"), ("bert-clf", "pooler"), ("gpt-clf-mean", "pooling=mean"),
                                         ("bert-pre-rope", "model.norm_first")])
def test_hf_refuses_what_it_cannot_represent_and_writes_nothing(tmp_path, tok, kind, words, capsys):
    run = make_run(tmp_path / "run", tok, kind)
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "a" / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmforge: error: --format hf") and words in err and "--format onnx" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_errors_are_one_line_and_touch_nothing(tmp_path, tok, capsys):
    run = make_run(tmp_path / "run", tok, "gpt")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = [
        (["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "o")], "not an lmforge run directory"),
        (["export", str(run), "--format", "tflite", "--out", str(tmp_path / "o")], "invalid choice"),
        (["export", str(run), "--format", "onnx", "--out", str(full)], "not empty"),
    ]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lmforge: error:") and words in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "run"] and (full / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="--format"):
        ex.export_run(run, "tflite", tmp_path / "o")


def test_a_failed_parity_check_leaves_no_half_export(tmp_path, tok, monkeypatch):
    run = make_run(tmp_path / "run", tok, "gpt")
    monkeypatch.setattr(ex, "TOLERANCE", 0.0)  # nothing passes
    with pytest.raises(UserError, match="parity check failed"):
        ex.export_run(run, "onnx", tmp_path / "new" / "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    (tmp_path / "empty").mkdir()  # an existing empty --out is kept as it was
    with pytest.raises(UserError, match="parity check failed"):
        ex.export_run(run, "onnx", tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"] and not any((tmp_path / "empty").iterdir())
    monkeypatch.undo()
    ex.export_run(run, "onnx", tmp_path / "empty")  # and an empty folder is a valid --out
    assert (tmp_path / "empty" / "model.onnx").is_file()


def test_lora_run_exports_with_adapters_merged(tmp_path, tok):
    from lmforge.models.lora import apply_lora, lora_state_dict
    from lmforge.runs.files import save_tensors

    base = make_run(tmp_path / "base", tok, "gpt")
    cfg = RunConfig(model=ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=16),
                    finetune=FinetuneConfig(labels="neg,pos", mode="lora", base=str(base)))
    cfg.lora.targets = "c_attn,c_fc"
    clf = build_classifier(cfg.model, cfg.finetune, 2, tok.pad_id)
    clf.backbone.load_state_dict(load_run(base)[1].state_dict())
    apply_lora(clf.eval(), cfg.lora)
    with torch.no_grad():
        for name, p in clf.named_parameters():
            if "lora_B" in name or name.startswith("head."):
                p.add_(torch.randn(p.shape) * 0.1)
    run = tmp_path / "lora"
    run.mkdir()
    (run / "config.yaml").write_text(save_config(cfg), encoding="utf-8")
    tok.save(run / "tokenizer.json")
    save_tensors(run / "model.safetensors", lora_state_dict(clf, extra=("head.*",)), {"lmforge": "lora"})
    for fmt in ("onnx", "hf"):
        info = ex.export_run(run, fmt, tmp_path / fmt)
        assert info["model"] == "gpt-classifier" and info["max_abs_diff"] < 1e-4
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert not any("lora" in k for k in hf.state_dict())
    feed = padded_batch(tok, ["input_ids", "attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(hf(**feed).logits, clf(feed["input_ids"], feed["attention_mask"]), atol=1e-4, rtol=0)
