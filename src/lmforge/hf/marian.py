"""Our Seq2SeqTransformer -> ``transformers.MarianMTModel`` (post-LN) or ``PegasusForConditionalGeneration``
(pre-LN): what they can express, config, key map.

Marian (BART-style, as in transformers) is post-LN with biases everywhere, LayerNorm eps 1e-5, one shared
embedding for source, target and output layer (scaled by sqrt(d_model) with ``scale_embedding``), and a
*fixed* sinusoidal position table that is not saved (``MarianSinusoidalPositionalEmbedding`` rebuilds it):
sin of the C/2 frequencies in the first half of the columns, cos in the second, the layout lmforge's
seq2seq model uses too (``sinusoidal_positions(..., halves=True)``). Both stacks use the exact erf GELU ->
``activation_function: gelu``. Pegasus is the same model with pre-LN layers and a final LayerNorm on each
stack (``encoder.layer_norm`` / ``decoder.layer_norm``, our ``ln_f``), the layout of a pre-LN seq2seq
(``model.norm_first: true``); its position table is Marian's, stored as a frozen weight.

Keys: ours (GPT-2 names, fused ``c_attn``) -> Marian's (``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``,
``fc1`` / ``fc2``, ``self_attn_layer_norm`` / ``encoder_attn_layer_norm`` / ``final_layer_norm``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.config import ModelConfig

MARIAN_EPS = 1e-5  # Marian's nn.LayerNorm default


def marian_positions(T: int, C: int) -> Tensor:
    """Marian's fixed position table (T, C), float32: sin of the frequencies in columns [0, ceil(C/2)), cos after."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    freq = torch.pow(10000.0, 2 * (torch.arange(C, dtype=torch.float64) // 2) / C)  # (C,)
    angle = pos / freq  # (T, C); columns 2i and 2i + 1 share frequency i
    return torch.cat([torch.sin(angle[:, 0::2]), torch.cos(angle[:, 1::2])], dim=1).float()  # ceil(C/2) sin, C//2 cos


def hf_class_name(cfg: ModelConfig) -> str:
    """The transformers class a seq2seq of ``cfg`` exports to: Marian for post-LN, Pegasus for pre-LN layers."""
    return "PegasusForConditionalGeneration" if cfg.norm_first else "MarianMTModel"


def hf_class(cfg: ModelConfig):
    """The ``transformers`` class itself (see :func:`hf_class_name`)."""
    import transformers

    return getattr(transformers, hf_class_name(cfg))


def not_in_marian(cfg: ModelConfig, tok: Any) -> str | None:
    """None if the class of :func:`hf_class_name` (Marian, or Pegasus for pre-LN) computes exactly what a
    seq2seq of ``cfg`` does, else the one-line reason, ``"<field>: <value> cannot be exported as <class> (<why>)"``."""
    name = hf_class_name(cfg)

    def no(field: str, value: Any, why: str) -> str:
        return f"{field}: {str(value).lower() if isinstance(value, bool) else value} cannot be exported as {name} ({why})"

    if cfg.pos_emb != "sinusoidal":
        return no("model.pos_emb", cfg.pos_emb, "Marian's positions are a fixed sinusoidal table only")
    if cfg.source_vocab_size:
        return no("model.source_vocab_size", cfg.source_vocab_size, "one joint vocabulary and shared embeddings only")
    if not cfg.tie_weights:
        return no("model.tie_weights", False, "the output layer is tied to the shared embedding")
    if not cfg.bias:
        return no("model.bias", False, "biases in every Linear and LayerNorm")
    if cfg.norm_eps != MARIAN_EPS:
        return no("model.norm_eps", cfg.norm_eps, f"LayerNorm eps {MARIAN_EPS:g} only")
    for role in ("bos", "eos", "pad"):
        if getattr(tok, f"{role}_id") is None:
            return no("the tokenizer", f"without a {role} token", "Marian needs bos (decoder start), eos and pad ids")
    return None


def hf_marian_config(cfg: ModelConfig, bos_id: int, eos_id: int, pad_id: int, **overrides: Any):  # -> MarianConfig
    """The ``transformers.MarianConfig`` (post-LN) or ``PegasusConfig`` (pre-LN) of a seq2seq ``cfg`` that
    :func:`not_in_marian` accepts."""
    from transformers import MarianConfig, PegasusConfig

    kwargs = dict(
        vocab_size=cfg.vocab_size, decoder_vocab_size=cfg.vocab_size, d_model=cfg.n_embd,
        encoder_layers=cfg.n_layer, decoder_layers=cfg.n_decoder_layers,
        encoder_attention_heads=cfg.n_head, decoder_attention_heads=cfg.n_head,
        encoder_ffn_dim=4 * cfg.n_embd, decoder_ffn_dim=4 * cfg.n_embd, activation_function="gelu",
        dropout=cfg.dropout, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
        max_position_embeddings=cfg.block_size, scale_embedding=True, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, is_encoder_decoder=True,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, decoder_start_token_id=bos_id,
        forced_eos_token_id=None,
    )
    if cfg.norm_first:  # Pegasus always shares one embedding and has no separate decoder vocabulary
        del kwargs["decoder_vocab_size"], kwargs["share_encoder_decoder_embeddings"]
    kwargs.update(overrides)
    return (PegasusConfig if cfg.norm_first else MarianConfig)(**kwargs)


def _split3(sd: dict, key: str, C: int) -> tuple[Tensor, ...]:
    return tuple(t.clone() for t in sd[key].split(C, dim=0))


def _attention(sd: dict, ours: str, hf: str, C: int, cross: bool = False) -> dict[str, Tensor]:
    """q / k / v / out projections of one attention: fused c_attn (q|k|v) or cross's q_attn + c_attn (k|v)."""
    out = {}
    for kind in ("weight", "bias"):
        if cross:
            q, (k, v) = sd[f"{ours}.q_attn.{kind}"], _split3(sd, f"{ours}.c_attn.{kind}", C)
        else:
            q, k, v = _split3(sd, f"{ours}.c_attn.{kind}", C)
        out.update({f"{hf}.q_proj.{kind}": q, f"{hf}.k_proj.{kind}": k, f"{hf}.v_proj.{kind}": v,
                    f"{hf}.out_proj.{kind}": sd[f"{ours}.c_proj.{kind}"]})
    return out


def seq2seq_to_marian_state_dict(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict -> MarianMTModel's, or PegasusForConditionalGeneration's for pre-LN (every key,
    embed_positions included as Marian's own table)."""
    C, out = cfg.n_embd, {}
    wte = sd["wte.weight"]
    for key in ("model.shared.weight", "lm_head.weight", *(f"model.{s}.embed_tokens.weight" for s in ("encoder", "decoder"))):
        out[key] = wte
    table = marian_positions(cfg.block_size, C)
    out["model.encoder.embed_positions.weight"] = out["model.decoder.embed_positions.weight"] = table
    out["final_logits_bias"] = torch.zeros(1, cfg.vocab_size)
    norms = {"encoder": {"ln_1": "self_attn_layer_norm", "ln_2": "final_layer_norm"},
             "decoder": {"ln_1": "self_attn_layer_norm", "ln_2": "encoder_attn_layer_norm", "ln_3": "final_layer_norm"}}
    for stack, n in (("encoder", cfg.n_layer), ("decoder", cfg.n_decoder_layers)):
        for i in range(n):
            ours, hf = f"{stack}.h.{i}", f"model.{stack}.layers.{i}"
            out.update(_attention(sd, f"{ours}.attn", f"{hf}.self_attn", C))
            if stack == "decoder":
                out.update(_attention(sd, f"{ours}.cross", f"{hf}.encoder_attn", C, cross=True))
            for kind in ("weight", "bias"):
                out[f"{hf}.fc1.{kind}"] = sd[f"{ours}.mlp.c_fc.{kind}"]
                out[f"{hf}.fc2.{kind}"] = sd[f"{ours}.mlp.c_proj.{kind}"]
                for a, b in norms[stack].items():
                    out[f"{hf}.{b}.{kind}"] = sd[f"{ours}.{a}.{kind}"]
        if cfg.norm_first:
            for kind in ("weight", "bias"):
                out[f"model.{stack}.layer_norm.{kind}"] = sd[f"{stack}.ln_f.{kind}"]
    return out
