"""Task ``translate``: an encoder-decoder model (``seq2seq`` or ``lstm_seq2seq``) trained on sentence pairs.

- Batches: :class:`lmforge.data.pair_batches.PairBatches` (pairs, or token-count batches of similar length).
- Loss: label-smoothed cross-entropy over the target tokens (``translate.label_smoothing``, 0.1 as in
  fairseq), padding ignored. Validation: the plain cross-entropy (so perplexity means what it says) and
  BLEU / chrF (sacrebleu) of ``translate.eval_sentences`` decoded val sentences.
- A run dir holds its pairs as ``data/{train,val,test}.tsv`` (header ``source<TAB>target``), the target
  side's ``tokenizer.json`` and, with ``translate.tokenizer: separate``, ``source_tokenizer.json``.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge import tasks
from lmforge.errors import UserError

SOURCE_TOKENIZER = "source_tokenizer.json"  # translate.tokenizer: separate (tokenizer.json is the target side's)
SPLITS = ("train", "val", "test")


def smoothed_loss(logits: torch.Tensor, y: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Mean label-smoothed cross-entropy of logits (B, T, V) against y (B, T); -100 positions are skipped."""
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, label_smoothing=eps)


def source_tokenizer(cfg, run_dir, tok):
    """The tokenizer of the source side: the run's own ``source_tokenizer.json`` or, joint, ``tok``."""
    if cfg.translate.tokenizer != "separate":
        return tok
    from lmforge.tokenizer import Tokenizer

    path = Path(run_dir) / SOURCE_TOKENIZER
    if not path.is_file():
        raise UserError(f"{path}: missing; a run with translate.tokenizer=separate needs its source tokenizer")
    return Tokenizer.load(path)


def encode_side(tok, texts: list[str], limit: int) -> list[list[int]]:
    """Token ids of each text, cut to ``limit`` tokens (the recipe has warned or refused already)."""
    return [ids[:limit] for ids in tok.encode_batch(list(texts))]


def decode_config(cfg, beam: int | None = None, **over):
    """A :class:`lmforge.models.search.DecodeConfig` from the run's ``translate`` section; ``beam`` 1 is greedy."""
    from lmforge.models.search import DecodeConfig

    t = cfg.translate
    beam = t.beam if beam is None else beam
    kw = dict(method="greedy" if beam == 1 else "beam", beam=beam, length_penalty=t.length_penalty,
              max_len_a=t.max_len_a, max_len_b=t.max_len_b, no_repeat_ngram=t.no_repeat_ngram)
    return DecodeConfig(**{**kw, **over})


def translate_texts(cfg, model, tok, src_tok, texts: list[str], beam: int | None = None, batch_size: int = 32,
                    **over) -> list[str]:
    """The translation of each text (detokenized), in order."""
    from lmforge.models.search import translate_ids

    src = encode_side(src_tok, texts, cfg.model.block_size)
    with torch.no_grad():
        out = translate_ids(model, src, tok.bos_id, tok.eos_id, tok.pad_id, decode_config(cfg, beam, **over),
                            batch_size=batch_size, max_positions=cfg.model.block_size)
    return [tok.decode(ids, skip_special_tokens=True).strip() for ids in out]


def bleu_chrf(hyps: list[str], refs: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu) with their signatures; Chinese targets get sacrebleu's zh tokenizer."""
    try:
        import sacrebleu
    except ImportError:
        raise UserError("BLEU needs sacrebleu: pip install 'lmforge[translate]' (or pip install sacrebleu)") from None
    cjk = sum(1 for r in refs for ch in r if "\u4e00" <= ch <= "\u9fff")
    tokenize = "zh" if cjk > 0.3 * max(1, sum(map(len, refs))) else "13a"
    bleu = sacrebleu.metrics.BLEU(tokenize=tokenize)
    chrf = sacrebleu.metrics.CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return {"bleu": round(b.score, 3), "chrf": round(c.score, 3),
            "signature": f"BLEU: {bleu.get_signature()} | chrF: {chrf.get_signature()}"}


@torch.no_grad()
def pair_loss(model, batches, device) -> tuple[float, int]:
    """(mean next-token cross-entropy without smoothing, target tokens scored) over (x, y) batches."""
    from lmforge.devices import call, to_device

    was = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in batches:
        y = y.to(device)
        logits = call(model, to_device(x, device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum").item()
        n += int((y != -100).sum())
    model.train(was)
    return (total / n if n else float("nan")), n


class Evaluator:
    """``fit()``'s evaluator for a translation run: the val loss and, on the first ``eval_sentences`` val
    pairs, BLEU and chrF of ``eval_beam`` decoding. Draws no random numbers (exact resume holds)."""

    def __init__(self, cfg, tok, src_tok, val):
        self.cfg, self.tok, self.src_tok = cfg, tok, src_tok
        n = cfg.translate.eval_sentences
        self.sources, self.refs = list(val.sources[:n]), list(val.targets[:n])

    def __call__(self, model, batches, device, dtype, info):
        loss, _ = pair_loss(model, batches, device)
        if not self.sources:
            return loss, {}
        was = model.training
        model.eval()
        hyps = translate_texts(self.cfg, model, self.tok, self.src_tok, self.sources, beam=self.cfg.translate.eval_beam)
        model.train(was)
        scores = bleu_chrf(hyps, self.refs)
        return loss, {"bleu": scores["bleu"], "chrf": scores["chrf"]}


def run_pairs(cfg, run_dir, split: str):
    """The pairs of ``split`` the recipe stored in the run dir (``data/<split>.tsv``)."""
    from lmforge.data.pairs import load_pairs

    path = Path(run_dir) / "data" / f"{split}.tsv"
    if not path.is_file():
        have = [s for s in SPLITS if (Path(run_dir) / "data" / f"{s}.tsv").is_file()]
        raise UserError(f"--split {split}: {run_dir} has no {split} pairs (it has {', '.join(have) or 'none'}; "
                        "pass --data FILE for other pairs)")
    return load_pairs(str(path))


class Translation(tasks.Task):
    name = "translate"

    def build(self, cfg, tok):
        from lmforge.models import build

        return build(cfg.model)

    def batches(self, cfg, tok, data):
        """``data``: (train pairs, val pairs, source tokenizer)."""
        from lmforge.data.pair_batches import PairBatches

        train, val, src_tok = data
        S, T = cfg.model.block_size, cfg.model.block_size - 1  # the target gets bos (input) / eos (label)
        return PairBatches(encode_side(src_tok, train.sources, S), encode_side(tok, train.targets, T),
                           encode_side(src_tok, val.sources, S), encode_side(tok, val.targets, T),
                           tok.pad_id, tok.bos_id, tok.eos_id, cfg.train.batch_size, cfg.train.seed,
                           batch_tokens=cfg.translate.batch_tokens)

    def run_batches(self, cfg, run_dir, tok):
        data = (run_pairs(cfg, run_dir, "train"), run_pairs(cfg, run_dir, "val"), source_tokenizer(cfg, run_dir, tok))
        return self.batches(cfg, tok, data)

    def loss(self, output, target):
        return smoothed_loss(output, target)

    def loss_for(self, cfg):
        return functools.partial(smoothed_loss, eps=cfg.translate.label_smoothing)

    def evaluator_for(self, cfg, tok, data):
        _, val, src_tok = data
        return Evaluator(cfg, tok, src_tok, val)

    def evaluate(self, cfg, model, tok, run_dir, data, split, device="cpu", source_column=None, target_column=None,
                 beam=None, max_batches=None, **_options) -> dict:
        from lmforge.data.pair_batches import collate_pairs
        from lmforge.data.pairs import load_pairs

        t = cfg.translate
        if data is None:
            pairs, described = run_pairs(cfg, run_dir, split), f"{run_dir}/data ({split})"
        else:
            pairs = load_pairs(data, split, source_column if source_column is not None else t.source_column,
                               target_column if target_column is not None else t.target_column, tsv_quoting=t.tsv_quoting)
            described = data if Path(data).exists() else f"{data} ({split})"
        if max_batches is not None:
            pairs = pairs.subset(range(min(len(pairs), 32 * max_batches)))
        src_tok = source_tokenizer(cfg, run_dir, tok)
        src = encode_side(src_tok, pairs.sources, cfg.model.block_size)
        tgt = encode_side(tok, pairs.targets, cfg.model.block_size - 1)
        batches = (collate_pairs(src[i : i + 64], tgt[i : i + 64], tok.pad_id, tok.bos_id, tok.eos_id)
                   for i in range(0, len(src), 64))
        loss, scored = pair_loss(model, batches, torch.device(device))
        beam = t.beam if beam is None else beam
        t0 = time.perf_counter()
        hyps = translate_texts(cfg, model, tok, src_tok, pairs.sources, beam=beam)
        seconds = time.perf_counter() - t0
        return {"run_dir": str(run_dir), "data": described, "sentences": len(pairs.sources), "tokens": scored,
                "loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50.0)), 3), "beam": beam,
                **bleu_chrf(hyps, pairs.targets), "sentences_per_s": round(len(hyps) / max(seconds, 1e-9), 2)}

    def translate(self, cfg, model, tok, run_dir, texts: list[str], beam: int | None = None) -> list[str]:
        return translate_texts(cfg, model, tok, source_tokenizer(cfg, run_dir, tok), texts, beam=beam)


tasks.register(Translation())
