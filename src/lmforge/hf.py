"""Hugging Face key maps (GPT-2, BERT) with shape asserts, and :func:`load_hf_folder`.

The state-dict maps do no file I/O; :func:`load_hf_folder` reads a saved HF model folder
(``config.json``, ``model.safetensors`` through :func:`lmforge.checkpoint.load_tensors`, the
tokenizer files) and never unpickles anything: a folder with only ``pytorch_model.bin`` is refused.

GPT-2: our parameter names mirror GPT-2's, so the map is explicit but short; the transforms are:

- GPT-2's attention / MLP projections are ``Conv1D`` layers storing weights as (in, out), ours are
  ``nn.Linear`` (out, in): those four weights per block are transposed (``.t().contiguous()``).
- Sinusoidal positions (ours) have no GPT-2 counterpart: export writes the table as a learned
  ``transformer.wpe.weight``, which is exactly equivalent (import then yields ``pos_emb='learned'``).
- ``bias=False`` (ours) exports zero biases (exact); import into a bias-free config drops the
  biases and raises if any is non-zero.
- A tied head: export includes ``lm_head.weight`` as the very same tensor as ``transformer.wte.weight``
  (``GPT2LMHeadModel.load_state_dict`` wants it; drop it before saving with safetensors); import takes
  wte when ``lm_head.weight`` is absent.

BERT (the name table is in :mod:`lmforge.models.bert`): HF's separate query / key / value
projections are concatenated (in that order, along the output dim) into our fused ``attn.c_attn``
and split again on export; ``cls.predictions.*`` maps to ``mlm_head``; the pooler, the NSP head
(``cls.seq_relationship``) and ``position_ids`` / ``token_type_ids`` buffers are ignored.

Every tensor's shape is checked against the config; a mismatch raises :class:`UserError` naming the
key and both shapes. ``transformers`` is imported only inside :func:`hf_gpt2_config` / :func:`hf_bert_config`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmforge.checkpoint import load_tensors
from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.models.layers import sinusoidal_positions
from lmforge.tokenizer import Tokenizer

# our block-relative key -> (GPT-2 block-relative key, transpose?, is a bias)
_BLOCK_KEYS: dict[str, tuple[str, bool, bool]] = {
    "ln_1.weight": ("ln_1.weight", False, False),
    "ln_1.bias": ("ln_1.bias", False, True),
    "attn.c_attn.weight": ("attn.c_attn.weight", True, False),
    "attn.c_attn.bias": ("attn.c_attn.bias", False, True),
    "attn.c_proj.weight": ("attn.c_proj.weight", True, False),
    "attn.c_proj.bias": ("attn.c_proj.bias", False, True),
    "ln_2.weight": ("ln_2.weight", False, False),
    "ln_2.bias": ("ln_2.bias", False, True),
    "mlp.c_fc.weight": ("mlp.c_fc.weight", True, False),
    "mlp.c_fc.bias": ("mlp.c_fc.bias", False, True),
    "mlp.c_proj.weight": ("mlp.c_proj.weight", True, False),
    "mlp.c_proj.bias": ("mlp.c_proj.bias", False, True),
}

# GPT-2 buffers found in older checkpoints (causal mask, -1e4 constant): not weights, ignored on import.
_HF_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our key -> our shape, for every tensor of a GPT with ``cfg`` (biases included even if bias=False)."""
    C, V = cfg.n_embd, cfg.vocab_size
    block = {
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,),
    }  # fmt: skip
    out = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg.block_size, C)}
    for i in range(cfg.n_layer):
        out.update({f"transformer.h.{i}.{k}": s for k, s in block.items()})
    out.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,), "lm_head.weight": (V, C)})
    return out


def _key_map(cfg: ModelConfig) -> list[tuple[str, str, bool, bool]]:
    """(our key, GPT-2 key, transpose?, is a bias) for every tensor GPT-2 has, lm_head excluded."""
    rows = [("transformer.wte.weight", "transformer.wte.weight", False, False)]
    rows.append(("transformer.wpe.weight", "transformer.wpe.weight", False, False))
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        rows += [(p + ours, p + theirs, t, b) for ours, (theirs, t, b) in _BLOCK_KEYS.items()]
    rows.append(("transformer.ln_f.weight", "transformer.ln_f.weight", False, False))
    rows.append(("transformer.ln_f.bias", "transformer.ln_f.bias", False, True))
    return rows


def _check(key: str, t: Tensor, expected: tuple[int, ...], side: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise UserError(
            f"{side} weight {key!r}: shape {tuple(t.shape)} does not match {tuple(expected)} expected from the model config"
        )


def gpt_to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our GPT state dict -> a ``GPT2LMHeadModel`` state dict (see the module docstring for the transforms)."""
    shapes = _shapes(cfg)
    needed = {ours for ours, _, _, is_bias in _key_map(cfg) if cfg.bias or not is_bias}
    if cfg.pos_emb == "sinusoidal":
        needed.discard("transformer.wpe.weight")
    if not cfg.tie_weights:
        needed.add("lm_head.weight")
    missing = sorted(needed - sd.keys())
    if missing:
        raise UserError(f"GPT state dict is missing {len(missing)} key(s) for this config: {', '.join(missing[:5])}")
    out: dict[str, Tensor] = {}
    ref = sd["transformer.wte.weight"]
    for ours, theirs, transpose, is_bias in _key_map(cfg):
        if is_bias and not cfg.bias:
            out[theirs] = torch.zeros(shapes[ours], dtype=ref.dtype, device=ref.device)
        elif ours == "transformer.wpe.weight" and cfg.pos_emb == "sinusoidal":
            out[theirs] = sinusoidal_positions(cfg.block_size, cfg.n_embd).to(ref.dtype).to(ref.device)
        else:
            t = sd[ours]
            _check(ours, t, shapes[ours], "GPT")
            out[theirs] = t.t().contiguous() if transpose else t
    if cfg.tie_weights:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    else:
        _check("lm_head.weight", sd["lm_head.weight"], shapes["lm_head.weight"], "GPT")
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def gpt_from_hf_state_dict(hf_sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """A ``GPT2LMHeadModel`` (or bare ``GPT2Model``, keys without ``transformer.``) state dict -> ours.

    ``cfg`` must describe the checkpoint (see :func:`model_config_from_hf_gpt2`) with learned
    positions. The result loads with ``GPT(cfg).load_state_dict(sd)`` (strict).
    """
    if cfg.pos_emb != "learned":
        raise UserError("GPT-2 checkpoints have learned positions: import them with model.pos_emb=learned")
    hf_sd = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v for k, v in hf_sd.items()}
    shapes = _shapes(cfg)
    rows = _key_map(cfg)
    missing = sorted({r[1] for r in rows} - hf_sd.keys())
    if missing:
        raise UserError(f"GPT-2 state dict is missing {len(missing)} key(s) for this config: {', '.join(missing[:5])}")
    known = {r[1] for r in rows} | {"lm_head.weight"}
    unexpected = sorted(k for k in hf_sd.keys() - known if not k.endswith(_HF_IGNORED_SUFFIXES))
    if unexpected:
        raise UserError(f"GPT-2 state dict has {len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}")
    out: dict[str, Tensor] = {}
    for ours, theirs, transpose, is_bias in rows:
        t = hf_sd[theirs]
        expected = shapes[ours][::-1] if transpose else shapes[ours]
        _check(theirs, t, expected, "GPT-2")
        if is_bias and not cfg.bias:
            if torch.count_nonzero(t):
                raise UserError(f"GPT-2 weight {theirs!r} is a non-zero bias: import it with model.bias=true")
            continue
        out[ours] = t.t().contiguous() if transpose else t
    head = hf_sd.get("lm_head.weight")
    if head is not None:
        _check("lm_head.weight", head, shapes["lm_head.weight"], "GPT-2")
    wte = out["transformer.wte.weight"]
    if cfg.tie_weights:
        if head is not None and head is not hf_sd["transformer.wte.weight"] and not torch.equal(head, wte):
            raise UserError("GPT-2 checkpoint has an untied lm_head.weight: import it with model.tie_weights=false")
        out["lm_head.weight"] = wte
    else:
        if head is None:
            raise UserError("GPT-2 state dict has no lm_head.weight but model.tie_weights=false")
        out["lm_head.weight"] = head
    return out


def hf_gpt2_config(cfg: ModelConfig, **overrides: Any):  # -> transformers.GPT2Config
    """The ``transformers.GPT2Config`` equivalent to ``cfg`` (dropout -> resid/embd/attn pdrop).

    ``overrides`` set further GPT2Config fields (``bos_token_id``, ``eos_token_id``,
    ``attn_implementation``...); bos / eos default to None since our vocabularies are not GPT-2's.
    """
    from transformers import GPT2Config

    kwargs = dict(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=None,  # 4 * n_embd
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_weights,
        bos_token_id=None,
        eos_token_id=None,
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def model_config_from_hf_gpt2(hf_config: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a GPT-2 ``config.json`` dict (or a ``GPT2Config``).

    >>> model_config_from_hf_gpt2({"vocab_size": 50257, "n_positions": 1024}).n_layer
    12
    """
    d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    if d.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"expected a GPT-2 config (model_type 'gpt2'), got model_type {d.get('model_type')!r}")
    act = d.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"GPT-2 config: activation_function {act!r} is not supported (ours is gelu_new)")
    n_embd = d.get("n_embd", 768)
    if d.get("n_inner") not in (None, 4 * n_embd):
        raise UserError(f"GPT-2 config: n_inner={d['n_inner']} is not supported (ours is 4 * n_embd = {4 * n_embd})")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if d.get(flag):
            raise UserError(f"GPT-2 config: {flag}=true is not supported")
    if d.get("scale_attn_weights", True) is False:
        raise UserError("GPT-2 config: scale_attn_weights=false is not supported")
    return ModelConfig(
        name="gpt",
        vocab_size=d["vocab_size"],
        block_size=d.get("n_positions", 1024),
        n_layer=d.get("n_layer", 12),
        n_head=d.get("n_head", 12),
        n_embd=n_embd,
        dropout=float(d.get("resid_pdrop", 0.1)),
        bias=True,
        pos_emb="learned",
        tie_weights=bool(d.get("tie_word_embeddings", True)),
        norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
    )


# ----------------------------------------------------------------------------- BERT

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
            _check(t, hf_sd[t], part, "BERT")
        out[ours] = torch.cat([hf_sd[t] for t in theirs]) if len(theirs) > 1 else hf_sd[theirs[0]]
    if not has_head:
        warnings.warn("BERT checkpoint has no cls.predictions (MLM head): it is freshly initialised", stacklevel=2)
        from lmforge.models.bert import BertForMaskedLM, MLMHead

        head = MLMHead(cfg)
        head.apply(BertForMaskedLM._init_weights)
        out.update({"mlm_head." + k: v.detach() for k, v in head.state_dict().items()})
    decoder = hf_sd.get("cls.predictions.decoder.weight")
    if decoder is not None:
        _check("cls.predictions.decoder.weight", decoder, shapes["mlm_head.decoder.weight"], "BERT")
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
            _check(ours, t, shapes[ours], "BERT")
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


# ----------------------------------------------------------------------------- HF model folders

_FAMILIES = {  # HF model_type -> (config map, state-dict map)
    "bert": (model_config_from_hf_bert, bert_from_hf_state_dict),
    "gpt2": (model_config_from_hf_gpt2, gpt_from_hf_state_dict),
}


def load_hf_folder(folder: str | Path) -> tuple[ModelConfig, dict[str, Tensor], Tokenizer]:
    """Read a Hugging Face model folder (as written by ``save_pretrained``) -> (config, state dict, tokenizer).

    ``config.json``'s ``model_type`` picks the map (``bert`` -> :class:`~lmforge.models.bert.BertForMaskedLM`
    keys, ``gpt2`` -> :class:`~lmforge.models.gpt.GPT` keys); the state dict loads strictly into
    ``build(cfg)``. Weights come from ``model.safetensors`` (or the shards of
    ``model.safetensors.index.json``) only. The tokenizer is ``tokenizer.json`` (padding and
    truncation settings dropped), else BERT's ``vocab.txt`` (``do_lower_case`` etc. from
    ``tokenizer_config.json``) or GPT-2's ``vocab.json`` + ``merges.txt``.
    Every problem is a one-line :class:`UserError` naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (expected a Hugging Face model folder: config.json, model.safetensors)")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{folder}: no config.json (expected a Hugging Face model folder, as save_pretrained writes)")
    try:
        d = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise UserError(f"{cfg_path}: expected a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type not in _FAMILIES:
        raise UserError(f"{cfg_path}: model_type {model_type!r} is not supported (known: {', '.join(_FAMILIES)})")
    to_config, to_state_dict = _FAMILIES[model_type]
    try:
        cfg = to_config(d)
    except UserError as e:
        raise UserError(f"{cfg_path}: {e}") from None
    hf_sd, source = _read_hf_weights(folder)
    try:
        sd = to_state_dict(hf_sd, cfg)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    tok = _read_hf_tokenizer(folder, model_type)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"{folder}: the tokenizer has {tok.vocab_size} tokens, config.json's vocab_size only {cfg.vocab_size}")
    return cfg, sd, tok


def _read_hf_weights(folder: Path) -> tuple[dict[str, Tensor], Path]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_tensors(single, "Hugging Face model weights")[0], single
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index}: not a safetensors index ({type(e).__name__})") from None
        tensors: dict[str, Tensor] = {}
        for shard in shards:
            tensors.update(load_tensors(folder / shard, "Hugging Face model weights")[0])
        return tensors, index
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if pickles:
        raise UserError(
            f"{folder}: has {', '.join(pickles)} but no model.safetensors; lmforge reads safetensors only (a .bin "
            "is a pickle, which can run code when loaded): re-save it with save_pretrained(..., safe_serialization=True)"
        )
    raise UserError(f"{folder}: no model.safetensors (expected a Hugging Face model folder, as save_pretrained writes)")


def _read_hf_tokenizer(folder: Path, model_type: str) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.load(folder / "tokenizer.json")
        tok.hf.no_padding()  # sentence-transformers folders pad / truncate: lmforge batches itself
        tok.hf.no_truncation()
        return tok
    if model_type == "bert" and (folder / "vocab.txt").is_file():
        opts: dict[str, Any] = {}
        tc_path = folder / "tokenizer_config.json"
        if tc_path.is_file():
            try:
                opts = json.loads(tc_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{tc_path}: not valid JSON ({str(e).splitlines()[0]})") from None
        return Tokenizer.from_wordpiece_vocab(
            folder / "vocab.txt",
            lowercase=bool(opts.get("do_lower_case", True)),
            strip_accents=opts.get("strip_accents"),
            handle_chinese_chars=bool(opts.get("tokenize_chinese_chars", True)),
        )
    if model_type == "gpt2" and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return Tokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")
    other = "vocab.txt" if model_type == "bert" else "vocab.json + merges.txt"
    raise UserError(f"{folder}: no tokenizer (expected tokenizer.json or {other})")
