"""The translation recipe: sentence pairs -> tokenizer(s) -> encoder-decoder -> ``fit()``, in a run dir.

Stages, each skipped when its product is already in the run dir (so ``--resume`` after a kill at any
stage continues): config.yaml; ``data/{train,val[,test]}.tsv`` (the pairs the run trains and validates
on, after the length / ratio filters: a snapshot, so a resume or ``evaluate --split`` reads exactly these);
tokenizer.json (+ source_tokenizer.json with ``translate.tokenizer: separate``); then checkpoints.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lmforge import tasks
from lmforge.config import RunConfig, save_config
from lmforge.errors import UserError
from lmforge.fileio import atomic_write_text
from lmforge.recipes.runner import run_in_dir
from lmforge.recipes.translate_starts import Starts, apply_starts, load_starts
from lmforge.runs import files as ckpt
from lmforge.tasks.translate import SOURCE_TOKENIZER, SPLITS, run_pairs
from lmforge.tokenizer import Tokenizer, train_tokenizer
from lmforge.training import distributed
from lmforge.training.loop import fit


def _source_pairs(cfg: RunConfig) -> dict:
    """{split: Pairs} of ``translate.data``: a registered set's own splits, or a file split by hash of the source."""
    from lmforge.data.pairs import load_pairs, split_pairs
    from lmforge.data.registry import is_registered

    t = cfg.translate
    if is_registered(t.data):
        return {s: load_pairs(t.data, s, t.source_column, t.target_column, tsv_quoting=t.tsv_quoting) for s in SPLITS}
    pairs = load_pairs(t.data, "train", t.source_column, t.target_column, tsv_quoting=t.tsv_quoting)
    return split_pairs(pairs, t.val_fraction, t.test_fraction)


def _write_pairs(path: Path, pairs) -> None:
    from lmforge.data.corpora import clean_pair_side  # a .csv field may hold a tab or a newline

    rows = ["source\ttarget"] + [f"{clean_pair_side(s)}\t{clean_pair_side(t)}" for s, t in zip(pairs.sources, pairs.targets)]
    atomic_write_text(path, "\n".join(rows) + "\n")


def _tokenizers(cfg: RunConfig, run_dir: Path, train, starts: Starts | None = None) -> tuple[Tokenizer, Tokenizer]:
    """(target tokenizer, source tokenizer): the run's own, else the pretrained starts', else trained on the
    training pairs (or data.tokenizer)."""
    tok_path, src_path = run_dir / ckpt.TOKENIZER, run_dir / SOURCE_TOKENIZER
    separate = cfg.translate.tokenizer == "separate"
    given, given_src = starts.tokenizers(joint=not separate) if starts else (None, None)
    if not tok_path.exists():
        if given:
            tok = given
        elif cfg.data.tokenizer:
            tok = Tokenizer.load(cfg.data.tokenizer)
        else:
            texts = list(train.targets) if separate else list(train.sources) + list(train.targets)
            print(f"training a {cfg.data.vocab_size}-token BPE tokenizer on the {'target side' if separate else 'pairs'} ...",
                  flush=True)
            tok = train_tokenizer(texts, cfg.data.vocab_size)
        tok.save(tok_path)
    if separate and not src_path.exists():
        (given_src or train_tokenizer(list(train.sources), cfg.data.vocab_size)).save(src_path)
    tok = Tokenizer.load(tok_path)
    return tok, (Tokenizer.load(src_path) if separate else tok)


def _prepare(cfg: RunConfig, run_dir: Path, starts: Starts | None) -> None:
    """The pair snapshot (filtered) and the tokenizer(s) into the run dir, each skipped if already there."""
    from lmforge.data.pairs import check_lengths, filter_pairs

    data_dir = run_dir / "data"
    if not (data_dir / "val.tsv").exists():
        splits = _source_pairs(cfg)
        if not len(splits.get("train", ())) or not len(splits.get("val", ())):
            raise UserError(f"translate.data {cfg.translate.data}: needs training and validation pairs (got "
                            f"{', '.join(f'{k} {len(v)}' for k, v in splits.items())}); give more pairs or a larger "
                            "translate.val_fraction")
        tok, src_tok = _tokenizers(cfg, run_dir, splits["train"], starts)
        t = cfg.translate
        count_src, count_tgt = (lambda s: len(src_tok.encode(s))), (lambda s: len(tok.encode(s)))
        if t.filter_max_tokens or t.filter_ratio:
            splits["train"], dropped = filter_pairs(splits["train"], t.filter_max_tokens, t.filter_ratio, count_src, count_tgt)
            if dropped:
                print(f"filters: dropped {dropped} training pairs", flush=True)
        for name, pairs in splits.items():
            cut = check_lengths(pairs, cfg.model.block_size, cfg.model.block_size - 1, count_src, count_tgt, t.too_long)
            if cut:
                warnings.warn(f"{pairs.source}: {cut} {name} pairs are longer than model.block_size "
                              f"({cfg.model.block_size} tokens) and are truncated (translate.too_long=refuse refuses them)")
        data_dir.mkdir(exist_ok=True)
        for name in ("test", "train", "val"):  # val.tsv last: its presence says the snapshot is complete
            if name in splits and len(splits[name]):
                _write_pairs(data_dir / f"{name}.tsv", splits[name])
    if not (run_dir / ckpt.TOKENIZER).exists() or (cfg.translate.tokenizer == "separate"
                                                   and not (run_dir / SOURCE_TOKENIZER).exists()):
        _tokenizers(cfg, run_dir, run_pairs(cfg, run_dir, "train"), starts)  # a kill came between the snapshot and them


def train_translation(cfg: RunConfig, run_dir: Path, resuming: bool, progress: bool = True) -> dict:
    """Start (config.yaml written by the caller's checks) or continue a translation run; fit()'s summary."""
    if not resuming and not cfg.translate.data:
        raise UserError("translate.data: no sentence pairs given (set it in the recipe or pass --translate.data NAME|FILE)")
    if cfg.train.keep_best in ("bleu", "chrf") and not cfg.translate.eval_sentences:
        raise UserError(f"train.keep_best: {cfg.train.keep_best} needs validation BLEU: set translate.eval_sentences > 0 "
                        "(or keep_best: loss)")
    if cfg.train.keep_best == "accuracy":
        raise UserError("train.keep_best: accuracy is a classifier's figure; a translation run keeps bleu, chrf or loss")
    if cfg.model.name not in ("seq2seq", "lstm_seq2seq"):
        raise UserError(f"model.name: task translate trains seq2seq or lstm_seq2seq models, not {cfg.model.name!r}")
    return run_in_dir(cfg, run_dir, resuming, _train, progress)


def _train(cfg: RunConfig, run_dir: Path, resuming: bool, info, progress: bool) -> dict:
    # the bases are read until the first checkpoint (a resume after it has its weights and tokenizers: no base needed)
    starts = None if (run_dir / ckpt.TRAIN_STATE).exists() else load_starts(cfg)
    distributed.main_first(info, lambda: _prepare(cfg, run_dir, starts))
    tok, src_tok = _tokenizers(cfg, run_dir, None)  # _prepare made them: only loaded here
    cfg.model.vocab_size = cfg.model.vocab_size or tok.vocab_size
    if cfg.translate.tokenizer == "separate":
        cfg.model.source_vocab_size = cfg.model.source_vocab_size or src_tok.vocab_size
    for name, need, have in (("vocab_size", tok.vocab_size, cfg.model.vocab_size),
                             ("source_vocab_size", src_tok.vocab_size, cfg.model.source_vocab_size or cfg.model.vocab_size)):
        if have < need:
            raise UserError(f"model.{name} ({have}) is smaller than the tokenizer's ({need}); use 0 to take the tokenizer's")

    def record_config() -> None:  # a resume's overrides are recorded once its checkpoint has loaded
        ckpt.atomic_write_text(run_dir / ckpt.CONFIG, save_config(cfg))
        ckpt.clean_stale_temps(run_dir)

    if not resuming:
        distributed.main_first(info, record_config)
    task = tasks.get("translate")
    data = (run_pairs(cfg, run_dir, "train"), run_pairs(cfg, run_dir, "val"), src_tok)
    torch.manual_seed(cfg.train.seed)
    model = task.build(cfg, tok)
    if starts:
        print(f"pretrained starts: copied {apply_starts(model, starts, cfg)} tensors; the cross-attention starts random",
              flush=True)
    summary = fit(model, task.batches(cfg, tok, data), cfg.train, run_dir, loss_fn=task.loss_for(cfg), info=info,
                  progress=progress, evaluator=task.evaluator_for(cfg, tok, data),
                  on_restored=(lambda: distributed.main_first(info, record_config)) if resuming else None)
    summary.update(run_dir=str(run_dir), params=sum(p.numel() for p in model.parameters()), is_main=info.is_main)
    return summary
