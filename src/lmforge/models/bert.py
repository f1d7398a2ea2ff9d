"""BERT: a post-LayerNorm bidirectional encoder (Devlin et al., 2019), plus its masked-LM head.

``BERT`` maps token ids (and an optional padding mask / token types) to hidden states (B, T, C);
``BertForMaskedLM`` adds BERT's ``cls.predictions`` head and returns logits (B, T, V), like every
model that :func:`lmforge.models.build` returns. :func:`mask_tokens` makes MLM inputs / labels.

Parameter names reuse GPT-2's vocabulary (``wte``, ``wpe``, ``h.N.attn.c_attn``, ``ln_1``,
``mlp.c_fc``, ``mlp.c_proj``, ...) rather than Hugging Face's BERT names: one name per role across
lmforge's families (LoRA / quantization target ``c_attn`` / ``c_proj`` / ``c_fc`` in both), and the
query / key / value projections are fused into one ``c_attn`` (one matmul), which a key-for-key
mirror of HF's ``attention.self.query`` could not be anyway. :mod:`lmforge.hf` maps explicitly::

    ours                       Hugging Face (BertForMaskedLM)
    bert.wte / wpe / wtt       bert.embeddings.word_ / position_ / token_type_embeddings
    bert.ln_e                  bert.embeddings.LayerNorm
    bert.h.N.attn.c_attn       bert.encoder.layer.N.attention.self.{query,key,value} (concatenated)
    bert.h.N.attn.c_proj       bert.encoder.layer.N.attention.output.dense
    bert.h.N.ln_1              bert.encoder.layer.N.attention.output.LayerNorm
    bert.h.N.mlp.c_fc          bert.encoder.layer.N.intermediate.dense
    bert.h.N.mlp.c_proj        bert.encoder.layer.N.output.dense
    bert.h.N.ln_2              bert.encoder.layer.N.output.LayerNorm
    mlm_head.dense / ln        cls.predictions.transform.dense / LayerNorm
    mlm_head.decoder           cls.predictions.decoder (weight tied to bert.wte), bias cls.predictions.bias

The padding mask is ``attention_mask`` (B, T) with 1 for a token and 0 for padding (HF's
convention); padded keys get an additive ``finfo.min`` bias, so no real token attends to them
(and an all-padding row stays finite).
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.layers import MLP, Dropout, MultiHeadAttention, padded_attention, rope_table, sinusoidal_positions


class SelfAttention(MultiHeadAttention):
    """Bidirectional multi-head self-attention (SDPA), BERT's: every query sees every kept key."""

    def forward(self, x: Tensor, keep: Tensor | None = None, rope: Tensor | None = None) -> Tensor:
        """``keep``: bool (B, 1, 1, T), True for keys that may be attended to (None = all); ``rope``
        (2, T, hs // 2): rotary rows that rotate q and k (``pos_emb=rope``)."""
        q, k, v = self.qkv(x, rope)  # (B, H, T, hs) each
        return self.out(padded_attention(q, k, v, keep, self.dropout if self.training else 0.0))


class Layer(nn.Module):
    """Post-LN encoder layer: x = ln_1(x + attn(x)), then x = ln_2(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg.n_embd, cfg.n_head_at(layer), cfg.dropout, cfg.bias, cfg.head_size)
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.dropout, cfg.bias, approximate="none", n_inner=cfg.n_inner_at(layer))  # exact erf GELU
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)

        self.norm_first = cfg.norm_first

    def forward(self, x: Tensor, keep: Tensor | None = None, rope: Tensor | None = None) -> Tensor:
        if self.norm_first:  # pre-LN (model.norm_first): x + attn(ln_1(x)), then x + mlp(ln_2(x))
            x = x + self.attn(self.ln_1(x), keep, rope)  # (B, T, C)
            return x + self.mlp(self.ln_2(x))  # (B, T, C)
        x = self.ln_1(x + self.attn(x, keep, rope))  # (B, T, C)
        x = self.ln_2(x + self.mlp(x))  # (B, T, C)
        return x


class BERT(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout, then ``n_layer`` post-LN layers.

    Positions are learned (``wpe``, ``block_size`` = BERT's max_position_embeddings) or the fixed
    sinusoidal table (non-persistent buffer ``pos_table``). Returns hidden states, not logits.

    >>> m = BERT(ModelConfig(name="bert", vocab_size=100, n_layer=1, n_embd=32, n_head=2, block_size=16))
    >>> m(torch.zeros(3, 5, dtype=torch.long), attention_mask=torch.ones(3, 5)).shape
    torch.Size([3, 5, 32])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError(f"BERT needs a positive vocab_size, got {cfg.vocab_size} (set it from the tokenizer)")
        self.cfg = cfg
        C = cfg.n_embd
        self.wte = nn.Embedding(cfg.vocab_size, C)
        if cfg.pos_emb == "learned":
            self.wpe = nn.Embedding(cfg.block_size, C)
        elif cfg.pos_emb == "rope":  # rotary positions on q and k of every layer, no position table
            self.register_buffer("rope", rope_table(cfg.block_size, cfg.head_size, cfg.rope_theta), persistent=False)
        else:
            self.register_buffer("pos_table", sinusoidal_positions(cfg.block_size, C), persistent=False)
        self.wtt = nn.Embedding(cfg.type_vocab_size, C)
        self.ln_e = nn.LayerNorm(C, eps=cfg.norm_eps, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)
        self.h = nn.ModuleList(Layer(cfg, i) for i in range(cfg.n_layer))
        if cfg.norm_first:  # pre-LN layers leave the residual stream unnormalised: one LayerNorm at the end
            self.ln_f = nn.LayerNorm(C, eps=cfg.norm_eps, bias=cfg.bias)

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None) -> Tensor:
        """Hidden states (B, T, C) for ids ``idx`` (B, T); ``attention_mask`` (B, T): 1 = token, 0 = pad."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.cfg.block_size}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != (B, T):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {(B, T)} like the token ids")
        pos, rope = 0.0, None
        if self.cfg.pos_emb == "learned":
            pos = self.wpe.weight[:T]  # (T, C)
        elif self.cfg.pos_emb == "rope":
            rope = self.rope[:, :T]  # (2, T, hs / 2)
        else:
            pos = self.pos_table[:T]  # (T, C)
        types = self.wtt(token_type_ids) if token_type_ids is not None else self.wtt.weight[0]  # (B, T, C) | (C,)
        x = self.drop(self.ln_e(self.wte(idx) + pos + types))  # (B, T, C)
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.h:
            x = layer(x, keep, rope)  # (B, T, C)
        return self.ln_f(x) if self.cfg.norm_first else x


class MLMHead(nn.Module):
    """BERT's ``cls.predictions``: dense C -> C, GELU, LayerNorm, then decoder C -> V with a bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.ln = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=True)

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.ln(self.gelu(self.dense(h))))  # (B, T, V)


class BertForMaskedLM(nn.Module):
    """The encoder ``bert`` plus ``mlm_head``; ``forward`` returns logits (B, T, vocab_size).

    With ``tie_weights`` the decoder shares its weight with ``bert.wte`` (BERT does). A task head
    (e.g. :class:`lmforge.models.classifier.SequenceClassifier`) takes ``model.bert`` as backbone.

    >>> m = BertForMaskedLM(ModelConfig(name="bert", vocab_size=100, n_layer=1, n_embd=32, n_head=2, block_size=16))
    >>> m(torch.zeros(2, 5, dtype=torch.long)).shape, m.mlm_head.decoder.weight is m.bert.wte.weight
    (torch.Size([2, 5, 100]), True)
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bert = BERT(cfg)
        self.mlm_head = MLMHead(cfg)
        if cfg.tie_weights:
            self.mlm_head.decoder.weight = self.bert.wte.weight
        self.apply(self._init_weights)  # BERT's init: N(0, 0.02), zero biases, LayerNorm (1, 0)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                select: Tensor | None = None) -> Tensor:
        """Logits (B, T, V); with ``select`` (bool (B, T)) only those of the selected positions, (N, V) in
        row-major order: MLM training scores the masked ~15% alone, so the vocabulary-wide head (as costly
        as the whole encoder at a small width) runs on them only."""
        h = self.bert(idx, attention_mask, token_type_ids)  # (B, T, C)
        if select is not None:
            h = h[select]  # (N, C)
        return self.mlm_head(h)

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (a tied decoder counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
