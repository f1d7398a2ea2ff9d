"""Masked-LM pretraining of the BERT-style encoder through `lmforge pretrain`."""

import json

from helpers import TINY, make_corpus

from lmforge.__main__ import main


def test_mlm_pretraining_learns_and_evaluates(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus.txt", lines=600)
    run = tmp_path / "bert"
    assert main(["pretrain", "--config", TINY, "--model.name=bert", "--model.norm_eps=1e-12", "--data.path", str(corpus),
                 "--train.max_steps=300", "--train.warmup_steps=40", "--train.eval_interval=100", "--train.lr=1e-3",
                 "--out", str(run)]) == 0
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["loss"] for r in vals if r["split"] == "val"]
    assert len(vals) == 3 and vals[-1] < vals[0]
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["objective"] == "mlm" and r["loss"] < r["unigram_entropy"]
    assert main(["generate", str(run), "--prompt", "the"]) == 2
    assert "causal language model" in capsys.readouterr().err


def test_objective_must_fit_the_model(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c.txt")
    for extra, needle in [(["--data.objective=mlm"], "does not fit"), (["--model.name=lstm"], "cannot be pretrained")]:
        assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), *extra, "--out", str(tmp_path / "r")]) == 2
        assert needle in capsys.readouterr().err
        assert not (tmp_path / "r").exists()


def test_pretraining_batches_score_the_masked_tokens_alone(tokens):
    """pretrain's MLMBatches(select=True) feed the head the masked positions only: same loss as the full logits."""
    import torch

    from lmforge.config import ModelConfig
    from lmforge.data.batches import MLMBatches
    from lmforge.devices import call
    from lmforge.models import build
    from lmforge.tasks.lm import lm_loss

    tok, data = tokens
    torch.manual_seed(0)
    model = build(ModelConfig(name="bert", vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)).eval()
    full = MLMBatches(data, 32, 8, 0, 2, tok, 0.25)
    picked = MLMBatches(data, 32, 8, 0, 2, tok, 0.25, form="select")
    (x, y), (xs, ys) = full.train_batch(3, 0, 8), picked.train_batch(3, 0, 8)
    assert torch.equal(xs["idx"], x) and torch.equal(ys, y[y != -100]) and 0 < ys.numel() < y.numel()
    with torch.no_grad():
        torch.testing.assert_close(lm_loss(call(model, xs), ys), lm_loss(call(model, x), y), atol=1e-5, rtol=0)
