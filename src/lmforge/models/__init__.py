"""Model families: ``build(cfg)`` picks the class from ``cfg.name``; every model's forward returns logits."""

from __future__ import annotations

from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.models.bert import BERT, BertForMaskedLM
from lmforge.models.cnn import CNN, ResNet
from lmforge.models.electra import ElectraForPretraining
from lmforge.models.gpt import GPT
from lmforge.models.layers import KVCache
from lmforge.models.rnn_seq2seq import LSTMSeq2Seq
from lmforge.models.seq2seq import Seq2SeqTransformer
from lmforge.models.vit import ViT

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "bert": BertForMaskedLM, "electra": ElectraForPretraining,
                                      "seq2seq": Seq2SeqTransformer, "lstm_seq2seq": LSTMSeq2Seq, "cnn": CNN, "resnet": ResNet,
                                      "vit": ViT}
VISION = ("cnn", "resnet", "vit")  # image models: pixels in, no tokenizer

__all__ = ["BERT", "CNN", "GPT", "MODELS", "VISION", "ResNet", "ViT", "BertForMaskedLM", "ElectraForPretraining", "KVCache", "LSTMSeq2Seq",
           "Seq2SeqTransformer", "build"]


def build(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model for ``cfg`` (``cfg.vocab_size`` must already be set)."""
    if cfg.name not in MODELS:
        raise UserError(f"model.name: unknown model family {cfg.name!r} (known: {', '.join(MODELS)})")
    if cfg.vocab_size <= 0 and cfg.name not in VISION:
        raise UserError("model.vocab_size is 0: set it (or take it from the tokenizer) before building the model")
    return MODELS[cfg.name](cfg)
