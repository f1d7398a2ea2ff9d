"""GPT-2 layout <-> our GPT: key map, Conv1D transposes, shape checks (see :mod:`lmforge.hf`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.hf.common import check_shape
from lmforge.models.layers import sinusoidal_positions

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

# ModelConfig options GPT-2's layout has no counterpart for: (field, value)
_NOT_IN_GPT2 = (("pos_emb", "rope"), ("norm", "rmsnorm"), ("mlp", "swiglu"), ("mlp", "relu2"), ("qk_norm", True))


def not_in_gpt2(cfg: ModelConfig) -> str:
    """The options of ``cfg`` that GPT-2 cannot represent, e.g. ``'model.pos_emb=rope, model.qk_norm=true'``
    ('' when it can: learned or sinusoidal positions, LayerNorm, the GELU MLP, no q / k norms).

    >>> not_in_gpt2(ModelConfig(pos_emb="rope", mlp="swiglu"))
    'model.pos_emb=rope, model.mlp=swiglu'
    """
    return ", ".join(f"model.{k}={str(v).lower()}" for k, v in _NOT_IN_GPT2 if getattr(cfg, k) == v)


def _check_gpt2_layout(cfg: ModelConfig) -> None:
    if bad := not_in_gpt2(cfg):
        raise UserError(f"GPT-2 (Hugging Face GPT2LMHeadModel) cannot represent {bad}; export with --format onnx")


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



def gpt_to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our GPT state dict -> a ``GPT2LMHeadModel`` state dict (see the module docstring for the transforms).
    A config GPT-2 cannot represent (:func:`not_in_gpt2`) raises :class:`UserError`."""
    _check_gpt2_layout(cfg)
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
            check_shape(ours, t, shapes[ours], "GPT")
            out[theirs] = t.t().contiguous() if transpose else t
    if cfg.tie_weights:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    else:
        check_shape("lm_head.weight", sd["lm_head.weight"], shapes["lm_head.weight"], "GPT")
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def gpt_classifier_to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our ``SequenceClassifier(GPT, pooling="last")`` state dict -> a ``GPT2ForSequenceClassification`` one.

    The backbone goes through :func:`gpt_to_hf_state_dict` (its unused ``lm_head`` is dropped) and
    ``head.weight`` (L, C) becomes ``score.weight``. HF's ``score`` has no bias, so ours, b (L,), is
    folded into ``ln_f.bias``: with d = pinv(W) b (float64, the smallest such shift), W (h + d) = W h + b
    for every hidden state h, exact up to float rounding whenever W has full row rank (L <= C, as
    for any trained head). The logits are equal; the final hidden states of the exported
    ``transformer`` are shifted by d. A head whose bias cannot be folded raises :class:`UserError`.
    """
    out = gpt_to_hf_state_dict({k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}, cfg)
    del out["lm_head.weight"]
    W, b = sd["head.weight"], sd["head.bias"]  # (L, C), (L,)
    check_shape("head.weight", W, (b.shape[0], cfg.n_embd), "classifier")
    d = torch.linalg.pinv(W.double()) @ b.double()  # (C,)
    if (W.double() @ d - b.double()).abs().max().item() > 1e-6 * max(1.0, b.abs().max().item()):
        raise UserError("classifier head: its bias cannot be folded into ln_f (GPT2ForSequenceClassification's score has no bias)")
    out["transformer.ln_f.bias"] = (out["transformer.ln_f.bias"].double() + d).to(b.dtype)
    out["score.weight"] = W
    return out


def gpt_from_hf_state_dict(hf_sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """A ``GPT2LMHeadModel`` (or bare ``GPT2Model``, keys without ``transformer.``) state dict -> ours.

    ``cfg`` must describe the checkpoint (see :func:`model_config_from_hf_gpt2`) with learned
    positions. The result loads with ``GPT(cfg).load_state_dict(sd)`` (strict).
    """
    if cfg.pos_emb != "learned":
        raise UserError("GPT-2 checkpoints have learned positions: import them with model.pos_emb=learned")
    if bad := not_in_gpt2(cfg):
        raise UserError(f"GPT-2 checkpoints have LayerNorms, a GELU MLP and no q / k norms: import them without {bad}")
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
        check_shape(theirs, t, expected, "GPT-2")
        if is_bias and not cfg.bias:
            if torch.count_nonzero(t):
                raise UserError(f"GPT-2 weight {theirs!r} is a non-zero bias: import it with model.bias=true")
            continue
        out[ours] = t.t().contiguous() if transpose else t
    head = hf_sd.get("lm_head.weight")
    if head is not None:
        check_shape("lm_head.weight", head, shapes["lm_head.weight"], "GPT-2")
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
    A config GPT-2 cannot represent (:func:`not_in_gpt2`) raises :class:`UserError`.
    """
    _check_gpt2_layout(cfg)
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
