"""`lmforge compress --method distill`: the loss, its decrease on real tiny models, the distilled runs
(classifier, GPT LM, BERT MLM) through every verb, the zh student's size, and bad inputs.

Tiny teachers made here: a GPT classifier trained from scratch, a GPT LM and a BERT masked LM (30 steps each).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, TINY, assert_one_line_errors

from lmforge.__main__ import main
from lmforge.errors import UserError
from lmforge.runs.loader import load_run
from lmforge.tools.compress.distill import (
    Distiller,
    Outputs,
    TeacherBatches,
    _build_student,
    distill,
    distill_loss,
    student_config,
)

KEYS = {"size_mb", "params", "latency_ms_b1", "latency_ms_b32", "metric"}
COMMON = ["--train.eval_interval=0", "--train.save_interval=1000", "--data.vocab_size=300"]
LSTM = "model: {name: lstm, n_embd: 16, n_layer: 1}\ntrain: {max_steps: 30, batch_size: 16, lr: 2.0e-2, eval_interval: 15}\n"
GPT_LM = "model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 32}\ntrain: {max_steps: 20, batch_size: 8, lr: 3.0e-3}\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus, labelled):
    tmp, data = tmp_path_factory.mktemp("distill"), labelled
    assert main(["finetune", "--finetune.data", str(data), "--model.n_layer=2", "--model.n_embd=32", "--model.block_size=32", "--finetune.pooling=concat",
                 "--train.max_steps=30", "--train.batch_size=16", "--train.lr=3e-3", *COMMON, "--out", str(tmp / "clf")]) == 0
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.max_steps=30", *COMMON, "--out", str(tmp / "lm")]) == 0
    assert main(["pretrain", "--config", TINY, "--model.name=bert", "--data.path", str(corpus), "--train.max_steps=20",
                 "--model.block_size=32", *COMMON, "--out", str(tmp / "bert")]) == 0
    assert main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "280", "--out", str(tmp / "other-tok")]) == 0
    return tmp


def _recipe(folder, text: str, name: str = "student.yaml") -> str:
    (folder / name).write_text(text, encoding="utf-8")
    return str(folder / name)


def test_the_loss_is_hinton_s():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    T = 3.0
    kl = (t.div(T).softmax(-1) * (t.div(T).log_softmax(-1) - s.div(T).log_softmax(-1))).sum(-1).mean() * T * T
    torch.testing.assert_close(distill_loss(Outputs(s, t, None, None), y, T, 1.0), kl)
    torch.testing.assert_close(distill_loss(Outputs(s, t, None, None), y, T, 0.0), F.cross_entropy(s, y))
    torch.testing.assert_close(distill_loss(Outputs(s, t, None, None), y, T, 0.25), 0.25 * kl + 0.75 * F.cross_entropy(s, y))
    assert distill_loss(Outputs(s, s, None, None), y, T, 1.0).abs() < 1e-6  # the student agrees with the teacher
    torch.testing.assert_close(distill_loss(s, y, T, 0.5), F.cross_entropy(s, y))  # evaluation: hard labels only
    hs, ht = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(distill_loss(Outputs(s, t, hs, ht), y, T, 1.0, hidden_weight=2.0), kl + 2.0 * F.mse_loss(hs, ht))
    # token logits (B, T, V): positions labelled -100 (a masked LM's unmasked tokens) count for nothing
    s3, t3, y3 = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.tensor([[1, -100, 2], [-100, 0, 3]])
    keep = y3 != -100
    torch.testing.assert_close(distill_loss(Outputs(s3, t3, None, None), y3, T, 0.5),
                               distill_loss(Outputs(s3[keep], t3[keep], None, None), y3[keep], T, 0.5))


def test_init_embedding_keeps_the_teacher_s_principal_directions():
    from lmforge.config import ModelConfig
    from lmforge.models import build
    from lmforge.models.lstm import LSTMClassifier
    from lmforge.tools.compress.distill import init_embedding

    torch.manual_seed(0)
    teacher = build(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8))
    t = teacher.transformer.wte.weight.detach()
    narrow = build(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=4, block_size=8))
    std = narrow.transformer.wte.weight.std()
    init_embedding(narrow, teacher, 50)
    s = narrow.transformer.wte.weight.detach()  # (50, 4): uncorrelated columns holding the top 4 variances
    top = torch.linalg.eigvalsh(torch.cov(t.T)).flip(0)[:4]
    cov = torch.cov(s.T)
    torch.testing.assert_close(cov, torch.diag(cov.diag()), atol=1e-7, rtol=0)  # uncorrelated columns ...
    ratio = cov.diag() / top
    torch.testing.assert_close(ratio, ratio[:1].expand(4))  # ... holding the teacher's top 4 variances, rescaled
    torch.testing.assert_close(s.std(), std)  # to the student's own initial scale
    assert narrow.lm_head.weight is narrow.transformer.wte.weight  # still tied
    wide = LSTMClassifier(50, 16, 4, 1, 2, pad_id=3)
    init_embedding(wide, teacher, 50)
    w = wide.embed.weight.detach()
    assert w[3].abs().sum() == 0 and torch.allclose(w[:3] / t[:3], w[0, 0] / t[0, 0])  # the same rows, rescaled


@pytest.mark.parametrize("teacher", ["clf", "lm"])
def test_distillation_loss_decreases(runs, teacher, tmp_path):
    """fit() on real teacher outputs: the whole loss, its soft part and the hidden-state part all fall."""
    from lmforge.tools.compress.common import training_data
    from lmforge.training.loop import fit

    text = LSTM if teacher == "clf" else GPT_LM.replace("n_embd: 32", "n_embd: 16")  # both narrower: a projection
    tcfg, tmodel, tok = load_run(runs / teacher)
    cfg = student_config(_recipe(tmp_path, text), {"train.max_steps": "40", "train.eval_interval": "0"}, tcfg, tok, runs / teacher)
    inner, _ = training_data(cfg, runs / teacher, tok)
    batches = TeacherBatches(inner, tmodel, True, torch.device("cpu"), "float32", cache=teacher == "clf", progress=False)
    torch.manual_seed(0)
    student = _build_student(cfg, tok)
    ws, wt = batches.widths(student)
    assert ws < wt
    model = Distiller(student, torch.nn.Linear(ws, wt))
    x, y = batches.train_batch(1000, 0, 16)  # a batch fit() does not train on

    @torch.no_grad()
    def losses():
        model.eval()
        out = model(**x)
        return [float(distill_loss(out, y, 2.0, a, w)) for a, w in ((0.5, 1.0), (1.0, 0.0), (0.0, 0.0))] + \
            [float(F.mse_loss(out.student_hidden, out.teacher_hidden))]

    before = losses()
    fit(model, batches, cfg.train, tmp_path, loss_fn=lambda out, y: distill_loss(out, y, 2.0, 0.5, 1.0), progress=False)
    after = losses()
    assert all(a < 0.8 * b for a, b in zip(after, before)), (before, after)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if r["split"] == "train"]
    assert train[-1] < train[0]


def test_distilled_classifier_is_an_ordinary_run(runs, capsys):
    yaml = LSTM + "distill: {temperature: 3.0, alpha: 0.7, hidden_weight: 0.5}\n"
    r = distill(runs / "clf", _recipe(runs, yaml, "lstm.yaml"), runs / "clf-lstm", repeats=2, progress=False)
    assert KEYS <= r.keys() and KEYS <= r["original"].keys() and {"accuracy", "macro_f1"} <= r["metric"].keys()
    assert json.loads((runs / "clf-lstm" / "compression.json").read_text()) == r
    md = (runs / "clf-lstm" / "compression.md").read_text()
    assert md.count("\n") == 4 and "distill lstm 1x16" in md  # header, rule, teacher, student
    assert r["params"] < r["original"]["params"] / 2 and r["projection"] and r["training"]["steps"] == 30
    assert r["metric"]["accuracy"] >= 0.75, r["metric"]  # bread / sing: a few tokens decide the label
    cfg, m, tok = load_run(runs / "clf-lstm")
    tcfg, _, ttok = load_run(runs / "clf")
    assert type(m).__name__ == "LSTMClassifier" and tok.sha256 == ttok.sha256
    assert cfg.compress.source == str(runs / "clf") and cfg.distill.temperature == 3.0 and cfg.finetune.labels == tcfg.finetune.labels
    assert cfg.finetune.max_length == 32  # the teacher's block size: it could not read more
    names = sorted(p.name for p in (runs / "clf-lstm").iterdir())
    assert names == ["compression.json", "compression.md", "config.yaml", "metrics.jsonl", "model.safetensors", "tokenizer.json"]
    vals = [json.loads(line) for line in (runs / "clf-lstm" / "metrics.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals if v["split"] == "val" and "accuracy" in v] == [15, 30]
    capsys.readouterr()
    assert main(["evaluate", str(runs / "clf-lstm")]) == 0 and '"accuracy"' in capsys.readouterr().out
    assert main(["predict", str(runs / "clf-lstm"), "the people sing of bread", "the king walks at night"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["positive", "negative"]
    # a GPT student with its own pooling, through the CLI with overrides
    yaml = "model: {n_layer: 1, n_head: 2, n_embd: 16, block_size: 32}\nfinetune: {pooling: mean}\ntrain: {batch_size: 16, lr: 1.0e-2}\n"
    assert main(["compress", "--method", "distill", "--teacher", str(runs / "clf"), "--student-config", _recipe(runs, yaml, "g.yaml"),
                 "--out", str(runs / "clf-gpt"), "--train.max_steps=20", "--distill.alpha=0.9", "--distill.init_embedding=true", "--repeats=2"]) == 0
    assert "distill" in capsys.readouterr().out
    cfg, _, _ = load_run(runs / "clf-gpt")
    assert cfg.finetune.pooling == "mean" and cfg.distill.alpha == 0.9 and cfg.distill.init_embedding and cfg.train.max_steps == 20
    assert main(["predict", str(runs / "clf-gpt"), "queen and bread"]) == 0
    png = runs / "distill.png"
    assert main(["report", "compress", str(runs / "clf-lstm"), str(runs / "clf-gpt"), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("teacher", ["lm", "bert"])
def test_distilled_language_model_generates_and_evaluates(runs, teacher, capsys):
    text = GPT_LM if teacher == "lm" else GPT_LM.replace("model: {", "model: {name: bert, ")
    out = runs / f"{teacher}-student"
    r = distill(runs / teacher, _recipe(runs, text + "distill: {hidden_weight: 0.1}\n", f"{teacher}.yaml"), out, repeats=2,
                progress=False)
    assert {"loss", "perplexity"} <= r["metric"].keys() and r["params"] < r["original"]["params"]
    assert r["metric"]["loss"] < 5.5  # ln(300) = 5.7: it learned more than uniform in 20 steps
    assert (out / "data" / "meta.json").exists() and not (out / "train_state.safetensors").exists()
    cfg, _, _ = load_run(out)
    assert cfg.model.name == ("gpt" if teacher == "lm" else "bert") and cfg.model.n_layer == 1
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0 and '"perplexity"' in capsys.readouterr().out
    if teacher == "lm":
        assert main(["generate", str(out), "--prompt", "the king", "--max-new-tokens", "8", "--seed", "0"]) == 0
        assert capsys.readouterr().out.startswith("the king")


def test_the_zh_student_is_under_a_quarter_of_the_teacher():
    """configs/distill-zh-student.yaml against the teacher of configs/sentiment-zh.yaml, counted as compression.json does."""
    from lmforge.config import load_config
    from lmforge.runs.files import _dedupe
    from lmforge.tasks.classify import build_classifier

    def params(cfg):
        cfg.model.vocab_size = 8192
        model = build_classifier(cfg.model, cfg.finetune, 2, 0)
        return sum(t.numel() for t in _dedupe(model.state_dict()).values())

    teacher = load_config(REPO / "configs" / "sentiment-zh.yaml")
    teacher.model = load_config(REPO / "configs" / "gpt-zh-reviews.yaml").model  # finetune.base's shape
    student = load_config(REPO / "configs" / "distill-zh-student.yaml")
    assert not student.finetune.data and not student.finetune.base  # the teacher's data, from scratch
    assert params(student) <= params(teacher) / 4


def test_bad_inputs_are_one_line_errors_and_write_nothing(runs, tmp_path, capsys):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text((runs / "clf" / "tokenizer.json").read_text())
    (tmp_path / "noweights").mkdir()
    for f in ("config.yaml", "tokenizer.json"):
        (tmp_path / "noweights" / f).write_text((runs / "clf" / f).read_text())
    ok = _recipe(tmp_path, LSTM, "ok.yaml")
    bad = {
        "other-tok.yaml": LSTM + f"data: {{tokenizer: {runs / 'other-tok'}}}\n",
        "vocab.yaml": LSTM + "data: {vocab_size: 4096}\n",
        "model-vocab.yaml": LSTM.replace("n_layer: 1", "n_layer: 1, vocab_size: 999"),
        "unknown.yaml": LSTM + "distill: {temprature: 2}\n",
        "list.yaml": "- model\n- train\n",
        "broken.yaml": "model: {name: lstm\n",
        "alpha.yaml": LSTM + "distill: {alpha: 1.5}\n",
        "data.yaml": LSTM + "finetune: {data: chn-reviews}\n",
        "base.yaml": LSTM + f"finetune: {{base: {runs / 'lm'}}}\n",
        "block.yaml": GPT_LM.replace("block_size: 32", "block_size: 128"),
    }
    for name, text in bad.items():
        _recipe(tmp_path, text, name)
    c, lm, o = str(runs / "clf"), str(runs / "lm"), str(tmp_path / "out")
    d = ["compress", "--method", "distill", "--out", o]
    cases = [
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "other-tok.yaml")], "tokenizer mismatch: data.tokenizer"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "vocab.yaml")], "tokenizer mismatch: data.vocab_size 4096"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "model-vocab.yaml")], "tokenizer mismatch: model.vocab_size 999"),
        ([*d, "--teacher", c, "--student-config", ok, "--model.vocab_size=999"], "tokenizer mismatch"),
        ([*d, "--teacher", str(tmp_path / "tok"), "--student-config", ok], "not an lmforge run directory"),
        ([*d, "--teacher", str(tmp_path / "noweights"), "--student-config", ok], "model.safetensors: not found"),
        ([*d, "--teacher", str(tmp_path / "missing"), "--student-config", ok], "run directory not found"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "unknown.yaml")], "unknown key 'distill.temprature'"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "list.yaml")], "expected a mapping"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "broken.yaml")], "invalid YAML"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "nope.yaml")], "config file not found"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "alpha.yaml")], "distill.alpha"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "data.yaml")], "finetune.data 'chn-reviews' differs"),
        ([*d, "--teacher", c, "--student-config", str(tmp_path / "base.yaml")], "trained from scratch"),
        ([*d, "--teacher", lm, "--student-config", ok], "must be a gpt too"),
        ([*d, "--teacher", lm, "--student-config", str(tmp_path / "block.yaml")], "model.block_size 128 exceeds"),
        ([*d, "--teacher", c], "--student-config"),
        ([*d, c, "--student-config", ok], "--teacher RUN_DIR"),
        ([*d, "--teacher", c, "--student-config", ok, "--sparsity", "0.5"], "apply to --method prune"),
        ([*d, "--teacher", c, "--student-config", ok, "--gradual"], "--gradual apply to --method prune"),
        ([*d, "--teacher", c, "--student-config", ok, "--repeats", "0"], "--repeats"),
        ([*d, "--teacher", c, "--student-config", ok, "--out", c], "is the run being compressed"),
        (["compress", c, "--method", "int8", "--out", o, "--teacher", c], "apply to --method distill"),
        (["compress", c, "--method", "int8", "--out", o, "--train.max_steps=3"], "apply to --method distill"),
        (["compress", "--method", "int8", "--out", o], "give the run directory"),
    ]
    assert_one_line_errors(main, cases, tmp_path, capsys)  # and no OUT, no temporary folder left
    with pytest.raises(UserError, match="tokenizer mismatch"):
        distill(c, str(tmp_path / "vocab.yaml"), o)


def test_an_out_written_meanwhile_is_a_one_line_error(runs, tmp_path, monkeypatch, capsys):
    import lmforge.tools.compress.common as C

    measure = C.measure

    def racing(src, new, out, *args):  # another process fills --out while the student trains
        out.mkdir()
        (out / "theirs.txt").write_text("x")
        return measure(src, new, out, *args)

    monkeypatch.setattr(C, "measure", racing)
    argv = ["compress", "--method", "distill", "--teacher", str(runs / "clf"), "--student-config", _recipe(tmp_path, LSTM),
            "--out", str(tmp_path / "o"), "--train.max_steps=2", "--repeats=1"]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert last.startswith("lmforge: error: --out") and "another process wrote there" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "student.yaml"]  # no temporary folder left
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["theirs.txt"]
