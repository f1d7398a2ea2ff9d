"""``translate:``: the data, training and decoding settings of a translation run (task ``translate``)."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config.fields import F, check_choice, check_float, check_int


@dataclass
class TranslateConfig:
    data: str = F("", "sentence pairs: a registered set (hsk-zh-en) or a .tsv / .csv / .jsonl file with a header "
                      "(a .tsv with header zh<TAB>en is the plain pair format)")
    source_column: str = F("", "column (or JSON key) of the source sentences; empty = the first column")
    target_column: str = F("", "column (or JSON key) of the target sentences; empty = the second column")
    tsv_quoting: str = F("none", "how a .tsv file is read: none (plain tab-separated lines) | csv (quoted fields)")
    val_fraction: float = F(0.05, "a local pair file: share of the pairs held out for validation (by hash of the source)")
    test_fraction: float = F(0.0, "a local pair file: share held out as the test split (by hash of the source)")
    tokenizer: str = F("joint", "joint (one BPE tokenizer on both sides, shared embeddings) | separate (one per side: "
                                "tokenizer.json for the target, source_tokenizer.json for the source)")
    too_long: str = F("truncate", "a sentence over model.block_size tokens: truncate (with a warning) | refuse (a "
                                  "file:line error)")
    filter_max_tokens: int = F(0, "training pairs: drop those with a side over this many tokens; 0 = off")
    filter_ratio: float = F(0.0, "training pairs: drop those whose longer side has more than this many times the "
                                 "shorter side's tokens; 0 = off")
    label_smoothing: float = F(0.1, "label-smoothed cross-entropy epsilon (fairseq's standard 0.1)")
    batch_tokens: int = F(0, "token-count batching: each optimizer step takes pairs of similar length, about this "
                             "many source + target tokens; 0 = train.batch_size pairs a step")
    eval_sentences: int = F(200, "validation BLEU at each evaluation on this many val pairs; 0 = loss only")
    eval_beam: int = F(1, "beam size of the validation BLEU (1 = greedy, the fastest)")
    beam: int = F(5, "default beam size of `lmforge translate` and `evaluate` (1 = greedy)")
    length_penalty: float = F(1.0, "beam search: a hypothesis' score is its log-probability / length ** this")
    max_len_a: float = F(1.5, "a translation has at most a * source tokens + b tokens (capped by model.block_size)")
    max_len_b: int = F(10, "see max_len_a")
    no_repeat_ngram: int = F(0, "beam search: never repeat an n-gram of this size; 0 = off")

    def __post_init__(self) -> None:
        check_choice("translate", "tsv_quoting", self.tsv_quoting, ("none", "csv"))
        check_choice("translate", "tokenizer", self.tokenizer, ("joint", "separate"))
        check_choice("translate", "too_long", self.too_long, ("truncate", "refuse"))
        check_float("translate.val_fraction", self.val_fraction, 0.0, 1.0, lo_open=False, what="a fraction")
        check_float("translate.test_fraction", self.test_fraction, 0.0, 1.0, lo_open=False, what="a fraction")
        check_float("translate.label_smoothing", self.label_smoothing, 0.0, 1.0, lo_open=False, hi_open=True,
                    what="a probability")
        check_float("translate.filter_ratio", self.filter_ratio, 0.0, None, lo_open=False)
        check_float("translate.length_penalty", self.length_penalty, 0.0, None, lo_open=False)
        check_float("translate.max_len_a", self.max_len_a, 0.0, None, lo_open=False)
        for k in ("filter_max_tokens", "batch_tokens", "eval_sentences", "max_len_b", "no_repeat_ngram"):
            check_int(f"translate.{k}", getattr(self, k), 0)
        for k in ("eval_beam", "beam"):
            check_int(f"translate.{k}", getattr(self, k), 1)
