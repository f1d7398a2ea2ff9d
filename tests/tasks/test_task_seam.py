"""A task from outside the package: sequence regression (a text's score, mean-squared error), registered here and
trained, saved, loaded back, evaluated and predicted with through the same fit(), run loader, `evaluate` and
`predict` the built-in tasks use, without touching any lmforge file. Plus the task field of run configs."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import make_corpus

import lmforge
from lmforge import tasks
from lmforge.__main__ import main
from lmforge.config import ModelConfig, RunConfig, TrainConfig, save_config
from lmforge.data.batches import collate, encode_texts
from lmforge.models.classifier import SequenceClassifier
from lmforge.models.gpt import GPT
from lmforge.tokenizer import train_tokenizer
from lmforge.training.loop import fit

WORDS = "the king and queen walk to the castle at night bread".split()


def scored_texts(n: int, seed: int) -> list[tuple[str, float]]:
    """Texts whose score is the number of times 'bread' occurs: learnable from the tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ws = [rng.choice(WORDS[:-1]) for _ in range(rng.randint(3, 7))]
        k = rng.randint(0, 3)
        for _ in range(k):
            ws.insert(rng.randint(0, len(ws)), "bread")
        rows.append((" ".join(ws), float(k)))
    return rows


class ScoreBatches:
    """A batch source: the global batch of a step is a function of (seed, step), as fit() requires."""

    def __init__(self, ids, scores, val_ids, val_scores, pad_id: int, batch: int, seed: int):
        self.ids, self.scores, self.val_ids, self.val_scores = ids, scores, val_ids, val_scores
        self.pad_id, self.batch, self.seed = pad_id, batch, seed
        self.tokens_per_sample = max(1, sum(map(len, ids)) // len(ids))

    def train_batch(self, step, index, size):
        g = torch.Generator().manual_seed(self.seed * 7919 + step)
        picks = torch.randint(len(self.ids), (self.batch,), generator=g).tolist()[index * size : (index + 1) * size]
        return collate([self.ids[i] for i in picks], self.pad_id), torch.tensor([self.scores[i] for i in picks])

    def eval_batches(self):
        for i in range(0, len(self.val_ids), 16):
            yield collate(self.val_ids[i : i + 16], self.pad_id), torch.tensor(self.val_scores[i : i + 16])


class Regression(tasks.Task):
    name = "regress"

    def build(self, cfg, tok):
        return SequenceClassifier(GPT(cfg.model), cfg.model.n_embd, 1, "last", 0.0)  # one output: the score

    def batches(self, cfg, tok, data):
        (train, val), pad = data, tok.pad_id or 0
        enc = [encode_texts(tok, [t for t, _ in part], cfg.model.block_size) for part in (train, val)]
        return ScoreBatches(enc[0], [s for _, s in train], enc[1], [s for _, s in val], pad, cfg.train.batch_size,
                            cfg.train.seed)

    def loss(self, output, target):
        return F.mse_loss(output.float().squeeze(-1), target.float())

    @torch.no_grad()
    def _scores(self, model, tok, texts, cfg):
        ids = encode_texts(tok, texts, cfg.model.block_size)
        x, mask = collate(ids, tok.pad_id or 0)
        return model(x, mask).squeeze(-1)

    def evaluate(self, cfg, model, tok, run_dir, data, split, **options):
        rows = json.loads(open(data, encoding="utf-8").read())
        pred = self._scores(model, tok, [t for t, _ in rows], cfg)
        mse = F.mse_loss(pred, torch.tensor([s for _, s in rows])).item()
        return {"run_dir": str(run_dir), "examples": len(rows), "mse": round(mse, 5)}

    def predict(self, cfg, model, tok, texts, device="cpu"):
        return [("score", float(s), t) for s, t in zip(self._scores(model, tok, texts, cfg).tolist(), texts)]


@pytest.fixture
def regression():
    task = tasks.register(Regression())
    yield task
    tasks._REGISTRY.pop("regress", None)  # noqa: SLF001 - the test's own registration, undone


def test_a_task_registered_from_outside_trains_saves_loads_evaluates_and_predicts(regression, tmp_path, capsys):
    torch.manual_seed(0)
    train, val = scored_texts(400, 0), scored_texts(60, 1)
    tok = train_tokenizer([t for t, _ in train], 300)
    cfg = RunConfig(task="regress", model=ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size),
                    train=TrainConfig(max_steps=150, batch_size=16, lr=3e-3, warmup_steps=10, eval_interval=50,
                                      save_interval=50, num_threads=1))
    run_dir = tmp_path / "regress"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(save_config(cfg), encoding="utf-8")
    tok.save(run_dir / "tokenizer.json")

    model = regression.build(cfg, tok)
    summary = fit(model, regression.batches(cfg, tok, (train, val)), cfg.train, run_dir, loss_fn=regression.loss,
                  progress=False)
    assert summary["steps"] == 150 and summary["val_loss"] < 0.5 * torch.tensor([s for _, s in val]).var().item()

    cfg2, loaded, tok2 = lmforge.load_run(run_dir)  # the run loader rebuilds it through the registered task
    assert cfg2.task == "regress" and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    (tmp_path / "val.json").write_text(json.dumps(val), encoding="utf-8")
    result = lmforge.evaluate(run_dir, data=str(tmp_path / "val.json"))
    assert result["examples"] == 60 and result["mse"] == pytest.approx(summary["val_loss"], abs=1e-5)
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "val.json")]) == 0  # the CLI, the same way
    assert json.loads(capsys.readouterr().out)["mse"] == result["mse"]

    (few, none), = [lmforge.predict(run_dir, ["the king walk", "bread bread bread the king"])]
    assert few[0] == "score" and none[1] > few[1] + 1.0  # three breads score well above none


def test_every_new_run_names_its_task_and_older_ones_get_theirs_derived(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", lines=120)
    assert main(["pretrain", "--data.path", str(corpus), "--model.n_layer=1", "--model.n_embd=32", "--model.n_head=2",
                 "--model.block_size=32", "--data.vocab_size=300", "--train.max_steps=2", "--out", str(tmp_path / "lm")]) == 0
    assert "task: lm" in (tmp_path / "lm" / "config.yaml").read_text()
    for cfg, name in [(RunConfig(), "lm"), (RunConfig(model=ModelConfig(name="bert")), "mlm"),
                      (RunConfig(model=ModelConfig(name="electra")), "rtd"),
                      (RunConfig(model=ModelConfig(name="lstm")), "classify")]:
        assert tasks.of(cfg).name == name
    with pytest.raises(lmforge.UserError, match="task: expected one of .*classify.*lm"):
        tasks.get("no-such-task")


def test_a_config_that_names_an_unknown_task_is_one_line_at_load(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c.txt", lines=120)
    assert main(["pretrain", "--data.path", str(corpus), "--model.n_layer=1", "--model.n_embd=32", "--model.n_head=2",
                 "--model.block_size=32", "--data.vocab_size=300", "--train.max_steps=2", "--out", str(tmp_path / "lm")]) == 0
    capsys.readouterr()
    cfg = (tmp_path / "lm" / "config.yaml").read_text().replace("task: lm", "task: regress")
    (tmp_path / "lm" / "config.yaml").write_text(cfg)
    assert main(["evaluate", str(tmp_path / "lm")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task: expected one of" in err[0] and "'regress'" in err[0]
