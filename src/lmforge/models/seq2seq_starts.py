"""Pretrained starts for :class:`~lmforge.models.seq2seq.Seq2SeqTransformer` (Rothe et al., 2020).

The encoder can start from a GPT (causal LM) or a BERT (masked LM) backbone, the decoder from a GPT; the
decoder's cross-attention (``cross``, with its LayerNorm ``ln_2``) has no counterpart and keeps its random
init, as in the paper. Pure functions of configs and state dicts: the recipe loads the runs.

What maps where (GPT names on the left, a BERT backbone's without the ``transformer.`` prefix):

- encoder: ``transformer.h.N.*`` -> ``encoder.h.N.*`` (same block layout: attn, ln_1, mlp, ln_2), ``ln_f``
  -> ``encoder.ln_f``, ``wpe`` -> ``encoder.wpe``, ``wte`` -> the source embedding;
- decoder: ``h.N.attn`` / ``ln_1`` / ``mlp`` -> the same names, the GPT's ``ln_2`` (before the MLP) ->
  ``ln_3``, ``ln_f`` -> ``decoder.ln_f``, ``wpe`` -> ``decoder.wpe``, ``wte`` -> ``wte`` (the target side).

A GPT block is pre-LN, so a GPT base makes the seq2seq pre-LN (``norm_first``); a BERT base brings its own
``norm_first``, and its embedding LayerNorm ``ln_e`` has no place in the seq2seq and is dropped. Bases with
sinusoidal positions are refused (GPT's table interleaves sin / cos and its embeddings are not scaled by
sqrt(C), both unlike the seq2seq's), as are GPT layers the seq2seq does not have (RMSNorm, SwiGLU, q / k
norms, pruned widths). GPT's MLP uses the tanh GELU, the seq2seq's the exact one: the difference is below
1e-3 of an activation and fine-tuning absorbs it.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.errors import UserError

SHARED = ("n_embd", "n_head", "bias", "norm_eps", "pos_emb", "rope_theta")  # one value for both stacks
GPT_ONLY = (("norm", "layernorm"), ("mlp", "gelu"), ("qk_norm", False), ("layer_n_head", ""), ("layer_n_inner", ""))


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def check_base(role: str, base: ModelConfig) -> None:
    """One-line UserError when the ``role`` ("encoder" | "decoder") base cannot start that stack."""
    field = f"finetune.{role}_base"
    allowed = ("gpt",) if role == "decoder" else ("gpt", "bert")
    if base.name not in allowed:
        what = "a GPT (causal LM) run" if role == "decoder" else "a GPT or masked-LM (bert) pretraining run"
        raise UserError(f"{field}: a {base.name} model cannot start the {role}; it takes {what}")
    if base.pos_emb == "sinusoidal":
        raise UserError(f"{field}: model.pos_emb: sinusoidal bases are not supported (their table and embedding scale "
                        "differ from the seq2seq's); pretrain the base with learned or rope positions")
    for k, ok in GPT_ONLY:
        if getattr(base, k) != ok:
            raise UserError(f"{field}: model.{k}: {_show(getattr(base, k))} has no counterpart in the seq2seq model "
                            f"(it has {_show(ok) or 'none'})")


def _norm_first(base: ModelConfig) -> bool:
    return True if base.name == "gpt" else base.norm_first  # a GPT block is pre-LN


def start_config(cfg: ModelConfig, encoder: ModelConfig | None, decoder: ModelConfig | None) -> ModelConfig:
    """``cfg`` with what the bases fix: width, heads, positions, norms, biases; ``n_layer`` from the encoder base,
    ``decoder_layers`` from the decoder base, ``block_size`` at most the bases'. Both bases must agree."""
    bases = [(r, b) for r, b in (("encoder", encoder), ("decoder", decoder)) if b is not None]
    if not bases:
        return cfg
    for role, b in bases:
        check_base(role, b)
    (r0, b0), rest = bases[0], bases[1:]
    for role, b in rest:
        for k in (*SHARED, "norm_first"):
            mine, theirs = (_norm_first(b), _norm_first(b0)) if k == "norm_first" else (getattr(b, k), getattr(b0, k))
            if mine != theirs:
                raise UserError(f"finetune.{role}_base: model.{k} {_show(mine)} differs from finetune.{r0}_base's "
                                f"{_show(theirs)}: the encoder and decoder share one width and layer layout")
    out = dataclasses.replace(cfg, **{k: getattr(b0, k) for k in SHARED}, norm_first=_norm_first(b0))
    if encoder is not None:
        out.n_layer = encoder.n_layer
    if decoder is not None:
        out.decoder_layers = decoder.n_layer
    elif not out.decoder_layers:
        out.decoder_layers = cfg.n_layer  # 0 meant "as many as the encoder": keep the recipe's count
    out.block_size = min(cfg.block_size, *(b.block_size for _, b in bases))
    return out


def _strip(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    p = "transformer." if cfg.name == "gpt" else ""
    return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}


def encoder_weights(sd: dict[str, Tensor], base: ModelConfig, embedding: str | None) -> dict[str, Tensor]:
    """Seq2seq keys -> tensors from an encoder base's state dict (GPT's, or a BERT backbone's without ``bert.``);
    ``embedding``: the seq2seq key its ``wte`` goes to (``src_wte.weight``, ``wte.weight``) or None (not copied)."""
    own = _strip(sd, base)
    out = {f"encoder.{k}": v for k, v in own.items() if k.startswith("h.") or k.startswith("ln_f.")}
    if "wpe.weight" in own:
        out["encoder.wpe.weight"] = own["wpe.weight"]
    if embedding:
        out[embedding] = own["wte.weight"]
    return out


def decoder_weights(sd: dict[str, Tensor], base: ModelConfig, tied: bool) -> dict[str, Tensor]:
    """Seq2seq keys -> tensors from a GPT's state dict; the GPT's ``lm_head`` too when the seq2seq is not ``tied``."""
    own, out = _strip(sd, base), {}
    for k, v in own.items():
        if k.startswith("h."):
            i, rest = k[2:].split(".", 1)
            out[f"decoder.h.{i}.{'ln_3' + rest[4:] if rest.startswith('ln_2') else rest}"] = v
        elif k.startswith("ln_f."):
            out[f"decoder.{k}"] = v
    if "wpe.weight" in own:
        out["decoder.wpe.weight"] = own["wpe.weight"]
    out["wte.weight"] = own["wte.weight"]
    if not tied:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def load_starts(model: nn.Module, weights: dict[str, Tensor]) -> list[str]:
    """Copy ``weights`` (seq2seq keys; position tables cut to the model's ``block_size``) into ``model``; the keys
    copied. A key the model lacks or a shape it does not take is a UserError naming the key."""
    sd, weights = model.state_dict(), dict(weights)
    if "wte.weight" in weights and model.lm_head.weight is model.wte.weight:  # tied: both keys name one tensor
        weights["lm_head.weight"] = weights["wte.weight"]
    for k, v in list(weights.items()):
        if k.endswith("wpe.weight"):
            v = weights[k] = v[: sd[k].shape[0]] if k in sd else v
        if k not in sd or tuple(sd[k].shape) != tuple(v.shape):
            have = tuple(sd[k].shape) if k in sd else "no such weight"
            raise UserError(f"pretrained start: {k} of shape {tuple(v.shape)} does not fit the seq2seq model ({have})")
    model.load_state_dict({**sd, **{k: v.to(sd[k].dtype) for k, v in weights.items()}})
    return sorted(weights)
