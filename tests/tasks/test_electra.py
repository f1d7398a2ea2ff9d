"""ELECTRA (replaced-token detection) pretraining: the model, exact resume, `lmforge pretrain` into a
run whose discriminator `lmforge finetune --base` takes, and the commands that refuse such a run."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from helpers import TINY, make_corpus, make_labelled, tiny_config
from safetensors.torch import load_file

from lmforge.__main__ import main
from lmforge.config import TrainConfig
from lmforge.data.batches import MLMBatches
from lmforge.data.shards import TokenData
from lmforge.models import build
from lmforge.models.electra import ElectraForPretraining
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tasks.rtd import DISC_WEIGHT, rtd_loss, rtd_losses
from lmforge.training.loop import fit

tiny = functools.partial(tiny_config, "electra")


def test_generator_shares_the_embeddings_and_both_parts_learn():
    torch.manual_seed(0)
    m = build(tiny(generator_layers=1))
    assert isinstance(m, ElectraForPretraining) and len(m.bert.h) == 2 and len(m.generator.bert.h) == 1
    assert m.generator.bert.wte is m.bert.wte and m.generator.bert.wpe is m.bert.wpe and m.generator.bert.ln_e is m.bert.ln_e
    assert m.generator.mlm_head.decoder.weight is m.bert.wte.weight
    names = set(m.state_dict())
    assert "bert.wte.weight" in names and "disc_head.2.weight" in names and "generator.bert.h.0.attn.c_attn.weight" in names

    ids = torch.randint(5, 300, (4, 16))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    inputs = ids.clone()
    inputs[:, ::4] = 4
    assert m(inputs).shape == (4, 16)  # without labels: the discriminator's replaced-token logits
    loss = rtd_loss(m(inputs, labels))
    assert loss.dim() == 0 and torch.isfinite(loss)
    # at init the generator is near-uniform: its CE ~ ln V; the discriminator's BCE ~ ln 2
    assert abs(loss.item() - (np.log(300) + DISC_WEIGHT * np.log(2))) < 6.0
    loss.backward()
    for name in ("generator.bert.h.0.mlp.c_fc.weight", "bert.h.1.mlp.c_fc.weight", "disc_head.2.weight", "bert.wte.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_a_perfect_generator_leaves_nothing_replaced(monkeypatch):
    """Where the generator samples the original token, the discriminator's target is 'original'."""
    torch.manual_seed(0)
    m = ElectraForPretraining(tiny())
    ids = torch.randint(5, 300, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[:, 1::3] = ids[:, 1::3]
    seen = {}

    def perfect(idx, attention_mask=None, token_type_ids=None, select=None):
        return torch.nn.functional.one_hot(labels[select], 300).float() * 1e4  # certain of the original

    monkeypatch.setattr(m.generator, "forward", perfect)
    out = m(ids, labels)  # the model returns what the task's loss reads: here, the discriminator's targets
    assert out.replaced.shape == (2, 16) and out.replaced.sum() == 0
    assert seen == {}


class Interrupt(MLMBatches):
    fail_at = None

    def train_batch(self, step, index, size):
        if step == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        return super().train_batch(step, index, size)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tokens):
    tok, data = tokens
    c = TrainConfig(max_steps=12, batch_size=8, lr=3e-3, warmup_steps=2, eval_interval=6, save_interval=4,
                    log_interval=2, optimizer="muon")

    def run(out, fail_at=None):
        torch.manual_seed(0)
        m = ElectraForPretraining(tiny(vocab_size=tok.vocab_size))
        b = Interrupt(data, 32, 8, 0, 2, tok, 0.25, form="rtd")
        b.fail_at = fail_at
        fit(m, b, c, out, loss_fn=rtd_loss, progress=False)
        return m

    ref = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", fail_at=10)
    assert ckpt.load_train_state(tmp_path / "run")["meta"]["step"] == 8
    m = run(tmp_path / "run")
    for (k, a), b in zip(ref.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), k


def test_pretrain_then_finetune_its_discriminator(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus.txt", lines=600)
    run = tmp_path / "electra"
    assert main(["pretrain", "--config", TINY, "--model.name=electra", "--model.norm_first=true", "--model.pos_emb=rope",
                 "--data.path",
                 str(corpus), "--data.mask_prob=0.25", "--train.max_steps=150", "--train.warmup_steps=20",
                 "--train.eval_interval=50", "--train.lr=2e-3", "--out", str(run)]) == 0
    vals = [r for r in ckpt.read_metrics(run) if r["split"] == "val"]
    assert len(vals) == 3
    for r in vals:  # the two parts are logged beside the combined loss
        assert r["loss"] == pytest.approx(r["generator_loss"] + DISC_WEIGHT * r["discriminator_loss"])
        assert 0.5 < r["discriminator_accuracy"] <= 1.0, r
    assert vals[-1]["generator_loss"] < vals[0]["generator_loss"]
    assert "perplexity" not in capsys.readouterr().out  # the loss is CE + 50 x BCE: no perplexity
    # both parts learned, against the same model untrained: the generator's CE fell well below ln V and the
    # discriminator's BCE below ln 2 (in 150 tiny steps, to about what the share of replaced tokens gives)
    cfg, trained, tok = loader.load_run(run)
    torch.manual_seed(0)
    fresh = build(cfg.model).eval()
    x, _ = next(iter(MLMBatches(TokenData.load(run / "data"), 64, 32, 0, 1, tok, 0.25, form="rtd").eval_batches()))
    with torch.no_grad():
        torch.manual_seed(1)
        gen, disc, acc = rtd_losses(trained(x["idx"], x["labels"]))
        torch.manual_seed(1)
        gen0, disc0, _ = rtd_losses(fresh(x["idx"], x["labels"]))
    assert gen < gen0 - 1.5 and disc < disc0 - 0.1 and acc > 0.7, (gen, gen0, disc, disc0, acc)

    data = make_labelled(tmp_path / "train.tsv")
    out = tmp_path / "clf"
    assert main(["finetune", "--finetune.data", str(data), "--base", str(run), "--finetune.pooling=mean",
                 "--train.max_steps=1", "--train.lr=1e-9", "--train.eval_interval=0", "--out", str(out)]) == 0
    cfg, model, _ = loader.load_run(out)
    assert cfg.model.name == "bert"  # the classifier is an ordinary BERT classifier
    disc = {k[len("bert."):]: v for k, v in load_file(run / ckpt.WEIGHTS).items() if k.startswith("bert.")}
    mine = model.backbone.state_dict()
    assert set(disc) == set(mine)
    for k, v in disc.items():  # the discriminator, not the generator (LR ~0: one step moves nothing visible)
        torch.testing.assert_close(mine[k], v, atol=1e-5, rtol=0)

    capsys.readouterr()
    for argv, needle in [(["evaluate", str(run)], "nothing to evaluate"),
                         (["compress", str(run), "--method", "int8", "--out", str(tmp_path / "q")], "nothing to compress"),
                         (["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x")], "nothing to export"),
                         (["compress", "--method", "distill", "--teacher", str(run), "--student-config", TINY,
                           "--out", str(tmp_path / "s")], "nothing to teach"),
                         (["generate", str(run), "--prompt", "the"], "causal language model")]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err, err
    assert not any((tmp_path / d).exists() for d in ("q", "x", "s"))


def test_objective_must_fit_electra(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c.txt")
    for extra, needle in [(["--model.name=electra", "--data.objective=mlm"], "rtd trains electra"),
                          (["--model.name=gpt", "--data.objective=rtd"], "does not fit model.name=gpt"),
                          (["--model.name=electra", "--model.generator_layers=0"], "model.generator_layers")]:
        assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), *extra, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert needle in err, err
