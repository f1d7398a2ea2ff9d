"""BERT layout <-> our BERT: key map, q/k/v fusion, shape checks (see :mod:`lmforge.hf`)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.hf.common import check_shape
from lmforge.models.layers import sinusoidal_positions

# our layer-relative key -> HF layer-relative key(s) (several = concatenated along dim 0), is a bias
_BERT_LAYER_KEYS: dict[str, tuple[tuple[str, ...], bool]] = {
    "attn.c_attn.weight": (tuple(f"attention.self.{n}.weight" for n in ("query", "key", "value")), False),
    "attn.c_attn.bias": (tuple(f"attention.self.{n}.bias" for n in ("query", "key", "value")), True),
    "attn.c_proj.weight": (("attention.output.dense.weight",), False),
    "attn.c_proj.bias": (("attention.output.dense.bias",), True),
    "ln_1.weight": (("attention.output.LayerNorm.weight",), False),
    "ln_1.bias": (("attention.output.LayerNorm.bias",), True),
    "mlp.c_fc.weight": (("intermediate.dense.weight",), False),
    "mlp.c_fc.bias": (("intermediate.dense.bias",), True),
    "mlp.c_proj.weight": (("output.dense.weight",), False),
    "mlp.c_proj.bias": (("output.dense.bias",), True),
    "ln_2.weight": (("output.LayerNorm.weight",), False),
    "ln_2.bias": (("output.LayerNorm.bias",), True),
}
_BERT_HEAD_KEYS: dict[str, tuple[str, bool]] = {  # ours -> HF (BertForMaskedLM), is a bias
    "mlm_head.dense.weight": ("cls.predictions.transform.dense.weight", False),
    "mlm_head.dense.bias": ("cls.predictions.transform.dense.bias", True),
    "mlm_head.ln.weight": ("cls.predictions.transform.LayerNorm.weight", False),
    "mlm_head.ln.bias": ("cls.predictions.transform.LayerNorm.bias", True),
    "mlm_head.decoder.bias": ("cls.predictions.bias", False),  # always present (HF ties decoder.bias to it)
}
# HF keys that are not weights of BertForMaskedLM: pooler, NSP head, index buffers.
_BERT_IGNORED = ("bert.pooler.", "cls.seq_relationship.")
_BERT_IGNORED_SUFFIXES = (".position_ids", ".token_type_ids")


def _bert_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our key -> shape for every tensor of a BertForMaskedLM with ``cfg`` (biases included)."""
    C, V = cfg.n_embd, cfg.vocab_size
    layer = {
        "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
    }  # fmt: skip
    out = {
        "bert.wte.weight": (V, C), "bert.wpe.weight": (cfg.block_size, C), "bert.wtt.weight": (cfg.type_vocab_size, C),
        "bert.ln_e.weight": (C,), "bert.ln_e.bias": (C,),
    }  # fmt: skip
    for i in range(cfg.n_layer):
        out.update({f"bert.h.{i}.{k}": s for k, s in layer.items()})
    out.update({"mlm_head.dense.weight": (C, C), "mlm_head.dense.bias": (C,), "mlm_head.ln.weight": (C,),
                "mlm_head.ln.bias": (C,), "mlm_head.decoder.weight": (V, C), "mlm_head.decoder.bias": (V,)})  # fmt: skip
    return out


def _bert_key_map(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], bool]]:
    """(our key, HF key(s), is a bias) for the encoder, HF keys with the ``bert.`` prefix."""
    rows = [
        ("bert.wte.weight", ("bert.embeddings.word_embeddings.weight",), False),
        ("bert.wpe.weight", ("bert.embeddings.position_embeddings.weight",), False),
        ("bert.wtt.weight", ("bert.embeddings.token_type_embeddings.weight",), False),
        ("bert.ln_e.weight", ("bert.embeddings.LayerNorm.weight",), False),
        ("bert.ln_e.bias", ("bert.embeddings.LayerNorm.bias",), True),
    ]
    for i in range(cfg.n_layer):
        ours, theirs = f"bert.h.{i}.", f"bert.encoder.layer.{i}."
        rows += [(ours + k, tuple(theirs + t for t in ts), b) for k, (ts, b) in _BERT_LAYER_KEYS.items()]
    return rows


def _hf_bert_key(k: str) -> str:
    """Normalise an HF BERT key: ``bert.`` prefix for encoder keys (bare BertModel has none), and
    the TF-era LayerNorm names ``gamma`` / ``beta`` as ``weight`` / ``bias``."""
    if not k.startswith(("bert.", "cls.")):
        k = "bert." + k
    if k.endswith(".gamma"):
        k = k[: -len("gamma")] + "weight"
    elif k.endswith(".beta"):
        k = k[: -len("beta")] + "bias"
    return k


def bert_from_hf_state_dict(hf_sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """A ``BertForMaskedLM`` (or bare ``BertModel``) state dict -> ours, loadable strictly into
    ``BertForMaskedLM(cfg)`` (see :func:`model_config_from_hf_bert` for ``cfg``).

    Without ``cls.predictions.*`` (a bare encoder, e.g. a sentence-embedding model) the MLM head is
    freshly initialised, as ``BertForMaskedLM(cfg)`` would do, with a warning.
    """
    if cfg.pos_emb != "learned" or not cfg.bias:
        raise UserError("BERT checkpoints have learned positions and biases: import with model.pos_emb=learned, model.bias=true")
    hf_sd = {_hf_bert_key(k): v for k, v in hf_sd.items()}
    hf_sd = {k: v for k, v in hf_sd.items() if not (k.startswith(_BERT_IGNORED) or k.endswith(_BERT_IGNORED_SUFFIXES))}
    if "cls.predictions.bias" not in hf_sd and "cls.predictions.decoder.bias" in hf_sd:
        hf_sd["cls.predictions.bias"] = hf_sd["cls.predictions.decoder.bias"]
    shapes = _bert_shapes(cfg)
    rows = _bert_key_map(cfg)
    has_head = any(k.startswith("cls.predictions.") for k in hf_sd)
    if has_head:
        rows += [(ours, (theirs,), b) for ours, (theirs, b) in _BERT_HEAD_KEYS.items()]
    needed = {t for _, ts, _ in rows for t in ts}
    missing = sorted(needed - hf_sd.keys())
    if missing:
        raise UserError(f"BERT state dict is missing {len(missing)} key(s) for this config: {', '.join(missing[:5])}")
    known = needed | {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    unexpected = sorted(hf_sd.keys() - known)
    if unexpected:
        raise UserError(f"BERT state dict has {len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}")
    out: dict[str, Tensor] = {}
    for ours, theirs, _ in rows:
        part = (shapes[ours][0] // len(theirs), *shapes[ours][1:])
        for t in theirs:
            check_shape(t, hf_sd[t], part, "BERT")
        out[ours] = torch.cat([hf_sd[t] for t in theirs]) if len(theirs) > 1 else hf_sd[theirs[0]]
    if not has_head:
        warnings.warn("BERT checkpoint has no cls.predictions (MLM head): it is freshly initialised", stacklevel=2)
        from lmforge.models.bert import BertForMaskedLM, MLMHead

        head = MLMHead(cfg)
        head.apply(BertForMaskedLM._init_weights)
        out.update({"mlm_head." + k: v.detach() for k, v in head.state_dict().items()})
    decoder = hf_sd.get("cls.predictions.decoder.weight")
    if decoder is not None:
        check_shape("cls.predictions.decoder.weight", decoder, shapes["mlm_head.decoder.weight"], "BERT")
    wte = out["bert.wte.weight"]
    if cfg.tie_weights:
        if decoder is not None and not torch.equal(decoder, wte):
            raise UserError("BERT checkpoint has an untied cls.predictions.decoder.weight: import with model.tie_weights=false")
        out["mlm_head.decoder.weight"] = wte
    elif decoder is not None:
        out["mlm_head.decoder.weight"] = decoder
    elif has_head:
        raise UserError("BERT state dict has no cls.predictions.decoder.weight but model.tie_weights=false")
    return out


def bert_to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our BertForMaskedLM state dict -> a ``transformers.BertForMaskedLM`` one (strict-loadable).

    Fused QKV is split into query / key / value; ``bias=False`` exports zero biases and sinusoidal
    positions export as the learned table (both exact). The decoder weight is the very tensor of
    the word embeddings when tied, and ``cls.predictions.decoder.bias`` the one of ``cls.predictions.bias``.
    """
    shapes = _bert_shapes(cfg)
    rows = _bert_key_map(cfg) + [(ours, (theirs,), b) for ours, (theirs, b) in _BERT_HEAD_KEYS.items()]
    rows.append(("mlm_head.decoder.weight", ("cls.predictions.decoder.weight",), False))
    exported = {ours for ours, _, is_bias in rows if cfg.bias or not is_bias}
    if cfg.pos_emb == "sinusoidal":
        exported.discard("bert.wpe.weight")
    if cfg.tie_weights:
        exported.discard("mlm_head.decoder.weight")
    missing = sorted(exported - sd.keys())
    if missing:
        raise UserError(f"BERT state dict is missing {len(missing)} key(s) for this config: {', '.join(missing[:5])}")
    ref = sd["bert.wte.weight"]
    out: dict[str, Tensor] = {}
    for ours, theirs, _ in rows:
        if ours in exported:
            t = sd[ours]
            check_shape(ours, t, shapes[ours], "BERT")
        elif ours == "bert.wpe.weight":
            t = sinusoidal_positions(cfg.block_size, cfg.n_embd).to(ref.dtype).to(ref.device)
        elif ours == "mlm_head.decoder.weight":
            t = out["bert.embeddings.word_embeddings.weight"]
        else:  # a bias of a bias-free model
            t = torch.zeros(shapes[ours], dtype=ref.dtype, device=ref.device)
        for name, piece in zip(theirs, t.chunk(len(theirs)) if len(theirs) > 1 else (t,)):
            out[name] = piece.contiguous() if len(theirs) > 1 else piece
    out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out


def hf_bert_config(cfg: ModelConfig, **overrides: Any):  # -> transformers.BertConfig
    """The ``transformers.BertConfig`` equivalent to ``cfg`` (dropout -> hidden and attention dropout)."""
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=4 * cfg.n_embd,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.block_size,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_weights,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def model_config_from_hf_bert(hf_config: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a BERT ``config.json`` dict (or a ``BertConfig``); HF defaults fill gaps.

    >>> c = model_config_from_hf_bert({"hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536})
    >>> c.name, c.n_embd, c.n_layer, c.n_head, c.block_size, c.norm_eps
    ('bert', 384, 6, 12, 512, 1e-12)
    """
    d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    if d.get("model_type", "bert") != "bert":
        raise UserError(f"expected a BERT config (model_type 'bert'), got model_type {d.get('model_type')!r}")
    act = d.get("hidden_act", "gelu")
    if act != "gelu":
        raise UserError(f"BERT config: hidden_act {act!r} is not supported (ours is 'gelu', the exact erf GELU)")
    hidden = d.get("hidden_size", 768)
    inner = d.get("intermediate_size", 3072)
    if inner != 4 * hidden:
        raise UserError(f"BERT config: intermediate_size={inner} is not supported (ours is 4 * hidden_size = {4 * hidden})")
    pos = d.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise UserError(f"BERT config: position_embedding_type {pos!r} is not supported (ours is 'absolute')")
    for flag in ("is_decoder", "add_cross_attention"):
        if d.get(flag):
            raise UserError(f"BERT config: {flag}=true is not supported")
    return ModelConfig(
        name="bert",
        vocab_size=d.get("vocab_size", 30522),
        block_size=d.get("max_position_embeddings", 512),
        n_layer=d.get("num_hidden_layers", 12),
        n_head=d.get("num_attention_heads", 12),
        n_embd=hidden,
        dropout=float(d.get("hidden_dropout_prob", 0.1)),
        bias=True,
        pos_emb="learned",
        tie_weights=bool(d.get("tie_word_embeddings", True)),
        norm_eps=float(d.get("layer_norm_eps", 1e-12)),
        type_vocab_size=d.get("type_vocab_size", 2),
    )
