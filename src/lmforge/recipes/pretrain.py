"""The pretraining recipe: data -> tokenizer -> token shards -> model -> ``fit()``, in a run dir.

Every stage writes its product into the run dir atomically and is skipped when the product is
already there, so ``--resume`` after a kill at any stage continues where the run stopped:
config.yaml first, then tokenizer.json, then data/ (token shards), then checkpoints.

Under torchrun, rank 0 does the one-off work (tokenizer, shards, saving); the others wait and read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from lmforge.config import RunConfig, save_config
from lmforge.data.shards import (
    TokenData,
    iter_eval_batches,
    make_batch,
    prepare_tokens,
    sample_starts,
)
from lmforge.errors import UserError
from lmforge.models import build
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tokenizer import Tokenizer, train_tokenizer
from lmforge.training import distributed
from lmforge.training.loop import fit, lm_loss, resolve_device


class LMBatches:
    """Random contiguous blocks of the train split; the global batch of step s is drawn from a
    generator seeded with (seed, s), and process / micro-batch ``index`` takes its slice of it."""

    def __init__(self, data: TokenData, block_size: int, global_batch: int, seed: int, eval_batches: int):
        self.data, self.block_size, self.global_batch = data, block_size, global_batch
        self.seed, self.n_eval = seed, eval_batches
        self.tokens_per_sample = block_size

    def train_batch(self, step: int, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = sample_starts(len(self.data.train), self.block_size, self.global_batch, g)
        return make_batch(self.data.train, starts[index * size : (index + 1) * size], self.block_size)

    def eval_batches(self):
        # a small text's validation split may be shorter than one block: score shorter windows then
        block = min(self.block_size, len(self.data.val) - 1)
        return iter_eval_batches(self.data.val, block, self.global_batch, self.n_eval)


class MLMBatches(LMBatches):
    """Masked-LM batches: the same random blocks, masked by BERT's 80/10/10 rule with a generator
    seeded by (seed, step) (train) or by the batch index (evaluation: the same masks every time)."""

    def __init__(self, data: TokenData, block_size: int, global_batch: int, seed: int, eval_batches: int,
                 tok: Tokenizer, mask_prob: float, form: str = "full"):
        super().__init__(data, block_size, global_batch, seed, eval_batches)
        # full: (inputs, labels (B, T)); select: ({"idx", "select"}, the picked positions' labels (N,)), for
        # BertForMaskedLM's head on those alone; rtd: ({"idx", "labels"}, labels): ElectraForPretraining's loss
        assert form in ("full", "select", "rtd"), form
        self.form = form
        if tok.mask_id is None:
            raise UserError(f"data.objective={'rtd' if form == 'rtd' else 'mlm'}: the tokenizer has no mask token (train one "
                            "with lmforge, or use a BERT vocabulary)")
        self.mask_id, self.vocab_size, self.specials, self.mask_prob = tok.mask_id, tok.vocab_size, tok.special_ids, mask_prob

    def _mask(self, x: torch.Tensor, seed: int):
        from lmforge.models.bert import mask_tokens

        inputs, labels = mask_tokens(x, self.mask_id, self.vocab_size, self.specials, torch.Generator().manual_seed(seed),
                                     self.mask_prob)
        if self.form == "rtd":
            return {"idx": inputs, "labels": labels}, labels
        if self.form == "full":
            return inputs, labels
        picked = labels != -100
        return {"idx": inputs, "select": picked}, labels[picked]

    def train_batch(self, step: int, index: int, size: int):
        x, _ = super().train_batch(step, index, size)
        return self._mask(x, (self.seed * 1_000_003 + step) * 64 + index)

    def eval_batches(self):
        for i, (x, _) in enumerate(super().eval_batches()):
            yield self._mask(x, 10_007 + i)


def objective(cfg: RunConfig) -> str:
    """clm, mlm or rtd for this config, or a UserError for a model / objective pair that cannot train."""
    natural = {"gpt": "clm", "bert": "mlm", "electra": "rtd"}
    if cfg.model.name not in natural:
        raise UserError(f"model.name: {cfg.model.name!r} cannot be pretrained (gpt, bert or electra; lstm is a classifier "
                        "for `lmforge finetune`)")
    obj = cfg.data.objective if cfg.data.objective != "auto" else natural[cfg.model.name]
    if obj != natural[cfg.model.name]:
        raise UserError(f"data.objective={obj} does not fit model.name={cfg.model.name}: clm trains gpt, mlm trains bert, "
                        "rtd trains electra")
    return obj


def _prepare(cfg: RunConfig, run_dir: Path) -> None:
    """Tokenizer and token shards into the run dir, each skipped if already there; then check them."""
    from lmforge.data.registry import load_text

    tok_path, data_dir = run_dir / ckpt.TOKENIZER, run_dir / "data"
    if not (tok_path.exists() and (data_dir / "meta.json").exists()):
        train_text, val_text = load_text(cfg.data.path, cfg.data.val_fraction)
        if not tok_path.exists():
            if cfg.data.tokenizer:
                tok = Tokenizer.load(cfg.data.tokenizer)
            else:
                print(f"training a {cfg.data.vocab_size}-token BPE tokenizer on {cfg.data.path} ...", flush=True)
                tok = train_tokenizer(train_text.splitlines(keepends=True), cfg.data.vocab_size)
            tok.save(tok_path)
        prepare_tokens(Tokenizer.load(tok_path), train_text, val_text, data_dir)
    _check_prepared(cfg, run_dir)


def _check_prepared(cfg: RunConfig, run_dir: Path) -> None:
    """What the prepared tokenizer and shards must satisfy for this config (each a UserError)."""
    tok, data = Tokenizer.load(run_dir / ckpt.TOKENIZER), TokenData.load(run_dir / "data")
    if 0 < cfg.model.vocab_size < tok.vocab_size:
        raise UserError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's ({tok.vocab_size}); use 0 to take the tokenizer's")
    if len(data.train) < cfg.model.block_size + 1:
        raise UserError(
            f"{cfg.data.path}: the train split has {len(data.train)} tokens, fewer than model.block_size + 1 "
            f"({cfg.model.block_size + 1}); use a smaller --model.block_size or more text"
        )
    if len(data.val) < 2:
        raise UserError(f"{cfg.data.path}: the validation split has {len(data.val)} tokens; give more text or a larger --data.val_fraction")


def pretrain(
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Start (``config_path`` / ``overrides`` / ``out``) or continue (``resume``) a pretraining run.

    Returns fit()'s summary (steps, tokens, seconds, train / val loss, val perplexity).
    """
    cfg, run_dir = loader.open_run(config_path, overrides or {}, out, resume)
    if resume is None and not cfg.data.path:
        raise UserError("data.path: no training data given (pass --data.path NAME|FILE|FOLDER or set data.path in the recipe)")
    objective(cfg)  # fail before anything is written
    info = distributed.init(resolve_device(cfg.train.device).type)
    clean = False  # set once this rank finished normally: only then wait for the others at shutdown
    existed = None
    try:
        if resume is None:  # every rank has checked the run dir is new before rank 0 writes
            distributed.barrier(info)
            existed = {p.name for p in run_dir.iterdir()} if run_dir.exists() else None
            distributed.main_first(info, lambda: ckpt.atomic_write_text(run_dir / ckpt.CONFIG, save_config(cfg)))
        summary = _train(cfg, run_dir, resume is not None, info, progress)
        clean = True
        return summary
    except Exception:  # bad data or config, found before the first checkpoint: leave no half-made run behind,
        if resume is None and info.is_main and not (run_dir / ckpt.TRAIN_STATE).exists():  # so the command can be re-run
            ckpt.discard_new_files(run_dir, existed)
        raise
    finally:
        distributed.shutdown(info, clean)


def _train(cfg: RunConfig, run_dir: Path, resuming: bool, info, progress: bool) -> dict:
    """Tokenizer and shards (each made once), the model and its batches, then ``fit()``."""
    distributed.main_first(info, lambda: _prepare(cfg, run_dir))
    tok = Tokenizer.load(run_dir / ckpt.TOKENIZER)
    data = TokenData.load(run_dir / "data")
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = tok.vocab_size

    def record_config() -> None:  # a resume's overrides are recorded once its checkpoint has loaded
        ckpt.atomic_write_text(run_dir / ckpt.CONFIG, save_config(cfg))
        ckpt.clean_stale_temps(run_dir)

    if not resuming:
        distributed.main_first(info, record_config)
    torch.manual_seed(cfg.train.seed)
    model = build(cfg.model)
    obj, loss_fn = objective(cfg), lm_loss
    if obj == "clm":
        batches = LMBatches(data, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed, cfg.train.eval_batches)
    else:
        batches = MLMBatches(data, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed, cfg.train.eval_batches,
                             tok, cfg.data.mask_prob, form="select" if obj == "mlm" else "rtd")
    evaluator = None
    if obj == "rtd":
        from lmforge.models.electra import electra_loss as loss_fn
        from lmforge.models.electra import evaluate_electra as evaluator
    summary = fit(model, batches, cfg.train, run_dir, loss_fn=loss_fn, info=info, progress=progress, evaluator=evaluator,
                  on_restored=(lambda: distributed.main_first(info, record_config)) if resuming else None)
    summary["run_dir"] = str(run_dir)
    summary["params"] = sum(p.numel() for p in model.parameters())
    if summary.get("val_loss") is not None and not math.isfinite(summary["val_loss"]):
        summary["val_ppl"] = float("inf")
    if obj == "rtd":  # the loss is generator CE + DISC_WEIGHT x discriminator BCE: no perplexity
        summary["val_ppl"] = None
    summary["is_main"] = info.is_main
    return summary
