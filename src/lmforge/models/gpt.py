"""GPT: a pre-LayerNorm decoder-only Transformer in the shape of GPT-2 (and nanoGPT's model.py).

Parameter names mirror Hugging Face's GPT-2 (``transformer.wte``, ``transformer.h.0.attn.c_attn``,
``lm_head``, ...) so that :mod:`lmforge.hf` is a thin key map (plus Conv1D transposes). The defaults
are GPT-2's layout; ``ModelConfig`` also offers rotary positions (``pos_emb=rope``), RMSNorm
(``norm=rmsnorm``, same ``ln_*`` names), SwiGLU / relu^2 MLPs (``mlp``, same ``c_fc`` / ``c_proj``)
and per-head q / k norms (``qk_norm``: ``attn.q_norm`` / ``attn.k_norm``), which GPT-2 cannot hold.
``forward`` returns logits; the loss lives in the training code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.layers import (
    MLP,
    CausalSelfAttention,
    Dropout,
    KVCache,
    norm_layer,
    rope_table,
    sinusoidal_positions,
)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). ``layer`` picks its shape
    when ``cfg.layer_n_head`` / ``layer_n_inner`` set one per block (structured pruning)."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = norm_layer(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head_at(layer), cfg.dropout, cfg.bias, cfg.head_size,
                                        qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps)
        self.ln_2 = norm_layer(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.dropout, cfg.bias, n_inner=cfg.n_inner_at(layer), activation=cfg.mlp)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0, rope: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rope)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    """Token (+ position) embeddings, ``n_layer`` blocks, a final norm and the output head.

    Positions are learned (``transformer.wpe``, GPT-2), a fixed sinusoidal table kept as a
    non-persistent buffer ``pos_table`` (not in the state dict), or rotary: no position embedding,
    q and k of every attention layer are rotated by the rows of the non-persistent buffer ``rope``
    (2, block_size, hs // 2). With ``tie_weights`` the head shares its weight tensor with ``transformer.wte``.

    >>> m = GPT(ModelConfig(vocab_size=100, n_layer=2, n_embd=32, n_head=2, block_size=16))
    >>> m(torch.zeros(3, 5, dtype=torch.long)).shape
    torch.Size([3, 5, 100])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError(f"GPT needs a positive vocab_size, got {cfg.vocab_size} (set it from the tokenizer)")
        self.cfg = cfg
        C = cfg.n_embd
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, C),
                **({"wpe": nn.Embedding(cfg.block_size, C)} if cfg.pos_emb == "learned" else {}),
                drop=Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer)),
                ln_f=norm_layer(cfg.norm, C, cfg.norm_eps, cfg.bias),
            )
        )
        if cfg.pos_emb == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(cfg.block_size, C), persistent=False)
        elif cfg.pos_emb == "rope":
            self.register_buffer("rope", rope_table(cfg.block_size, cfg.head_size, cfg.rope_theta), persistent=False)
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        # GPT-2 / nanoGPT init: N(0, 0.02); residual projections scaled by 1/sqrt(2 * n_layer).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits (B, T, vocab_size) for token ids ``idx`` (B, T).

        With a ``cache`` the tokens sit at positions ``[cache.pos, cache.pos + T)``; their keys and
        values are appended to the cache and ``cache.pos`` advances by T.
        """
        return self.lm_head(self.features(idx, cache))  # (B, T, V)

    def features(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final hidden states (B, T, C) after ``ln_f``: what the LM head (or a task head) reads."""
        T = idx.shape[1]  # idx: (B, T)
        start = 0 if cache is None else cache.pos
        if start + T > self.cfg.block_size:
            where = f" at position {start}" if start else ""
            raise ValueError(f"sequence of {T} tokens{where} exceeds block_size {self.cfg.block_size}")
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache full: {start} cached + {T} new tokens > max_len {cache.max_len}")
        x, rope = self.transformer.wte(idx), None  # (B, T, C)
        if self.cfg.pos_emb == "rope":
            rope = self.rope[:, start : start + T]  # (2, T, hs/2), applied in every attention layer
        else:
            table = self.transformer.wpe.weight if self.cfg.pos_emb == "learned" else self.pos_table
            x = x + table[start : start + T]  # (T, C) broadcast over the batch
        x = self.transformer.drop(x)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, rope)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        return x

    def new_cache(
        self,
        batch_size: int = 1,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """A pre-allocated :class:`KVCache` for this model (``max_len`` defaults to, and may not exceed, block_size).

        ``dtype`` defaults to the autocast dtype when autocast is on for the model's device, else to
        the parameters' dtype; ``device`` to the parameters' device.
        """
        max_len = self.cfg.block_size if max_len is None else max_len
        if not 0 < max_len <= self.cfg.block_size:
            raise ValueError(f"cache max_len must be in [1, block_size={self.cfg.block_size}], got {max_len}")
        w = self.transformer.wte.weight
        device = w.device if device is None else torch.device(device)
        if dtype is None:
            on = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if on else w.dtype
        cfg = self.cfg
        heads = [cfg.n_head_at(i) for i in range(cfg.n_layer)]
        return KVCache(batch_size, heads, max_len, cfg.head_size, dtype, device, n_layer=cfg.n_layer)

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
