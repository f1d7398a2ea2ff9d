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

from lmforge import tasks
from lmforge.config import RunConfig, save_config
from lmforge.data.shards import TokenData, prepare_tokens
from lmforge.devices import resolve_device
from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tokenizer import Tokenizer, train_tokenizer
from lmforge.training import distributed
from lmforge.training.loop import fit


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


TASK_OF = {"clm": "lm", "mlm": "mlm", "rtd": "rtd"}  # the task each pretraining objective is


def pretraining_task(cfg: RunConfig) -> str:
    """The task this pretraining config trains (lm, mlm or rtd), checked against ``task`` if the config names one."""
    name = TASK_OF[objective(cfg)]
    if cfg.task and cfg.task != name:
        raise UserError(f"task: {cfg.task!r} does not fit model.name={cfg.model.name} (pretraining it is task {name}; "
                        "a classifier is trained by `lmforge finetune`)")
    return name


def _prepare(cfg: RunConfig, run_dir: Path) -> None:
    """Tokenizer and token shards into the run dir, each skipped if already there; then check them."""
    from lmforge.data.text import load_text

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
    cfg.task = pretraining_task(cfg)  # fail before anything is written; every run dir names its task
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
    task = tasks.get(cfg.task)
    model = task.build(cfg, tok)
    summary = fit(model, task.batches(cfg, tok, data), cfg.train, run_dir, loss_fn=task.loss, info=info, progress=progress,
                  evaluator=task.evaluator, on_restored=(lambda: distributed.main_first(info, record_config)) if resuming else None)
    summary["run_dir"] = str(run_dir)
    summary["params"] = sum(p.numel() for p in model.parameters())
    if summary.get("val_loss") is not None and not math.isfinite(summary["val_loss"]):
        summary["val_ppl"] = float("inf")
    if task.evaluator is not None:  # its loss is a sum of several (ELECTRA's): no perplexity
        summary["val_ppl"] = None
    summary["is_main"] = info.is_main
    return summary
