"""Shared Transformer primitives: causal self-attention, MLP, sinusoidal positions, a static KV cache.

Model files (``gpt.py`` and later families) build from these; nothing here knows about training.
Shapes: B batch, T new tokens, C width (n_embd), H heads, hs head size (C // H), L cached length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(T: int, C: int) -> Tensor:
    """The fixed sin / cos position table of Vaswani et al. (2017), float32, shape (T, C).

    ``PE[pos, 2i] = sin(pos / 10000^(2i/C))`` and ``PE[pos, 2i+1] = cos(pos / 10000^(2i/C))``,
    computed in float64 then rounded. An odd ``C`` ends with a sine column.

    >>> sinusoidal_positions(2, 4)
    tensor([[0.0000, 1.0000, 0.0000, 1.0000],
            [0.8415, 0.5403, 0.0100, 0.9999]])
    """
    pos = torch.arange(T, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    two_i = torch.arange(0, C, 2, dtype=torch.float64)  # (ceil(C/2),)
    angle = pos / torch.pow(10000.0, two_i / C)  # (T, ceil(C/2))
    pe = torch.empty(T, C, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : C // 2])
    return pe.float()


class KVCache:
    """A static, pre-allocated key / value cache for incremental decoding.

    One k and one v buffer per layer, each ``(B, H, max_len, hs)``, allocated once and written in
    place: decoding a token costs two small slice copies per layer, no allocation and no
    ``torch.cat`` growth.

    Positions are tracked per model call: ``pos`` is the number of tokens already cached (the same
    for every layer and every row; rows are not padded separately). During a forward each attention
    layer calls :meth:`update`, which writes its T new keys / values at ``[pos, pos + T)`` and returns
    views of ``[0, pos + T)``; the model calls :meth:`advance` (T) once at the end of its forward.
    So a model reads ``cache.pos`` as the position of its first input token. :meth:`reset` starts
    over (the buffers are reused, not cleared).

    >>> c = KVCache(1, 2, 8, 4)
    >>> k, v = c.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))  # prefill 3 tokens
    >>> c.advance(3); k.shape, c.pos
    (torch.Size([1, 2, 3, 4]), 3)
    """

    def __init__(
        self,
        batch_size: int,
        n_head: int | list[int],
        max_len: int,
        head_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        n_layer: int = 1,
    ) -> None:
        heads = list(n_head) if isinstance(n_head, (list, tuple)) else [n_head] * n_layer  # per layer (pruned heads)
        n_layer = len(heads)
        self.k = [torch.empty((batch_size, h, max_len, head_size), dtype=dtype, device=device) for h in heads]
        self.v = [torch.empty((batch_size, h, max_len, head_size), dtype=dtype, device=device) for h in heads]
        self.batch_size, self.max_len, self.n_layer = batch_size, max_len, n_layer
        self.pos = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, hs) at ``[pos, pos + T)`` of ``layer``; return views (B, H, pos + T, hs)."""
        end = self.pos + k.shape[2]
        kb, vb = self.k[layer], self.v[layer]
        kb[:, :, self.pos : end] = k
        vb[:, :, self.pos : end] = v
        return kb[:, :, :end], vb[:, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection (GPT-2 names: c_attn, c_proj).

    Without a cache: SDPA with ``is_causal``. With a :class:`KVCache`: the T new queries at
    positions ``[pos, pos + T)`` attend over all ``pos + T`` cached keys; query i sees key j iff
    ``j <= pos + i`` (for T == 1 that is every key, for pos == 0 it is the usual causal mask).

    ``head_size`` (default n_embd // n_head) is given when heads were pruned: then H * hs < C, and
    ``c_attn`` maps C -> 3 * H * hs, ``c_proj`` H * hs -> C.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 head_size: int | None = None) -> None:
        super().__init__()
        assert head_size is not None or n_embd % n_head == 0, "n_embd must be divisible by n_head"
        self.head_size = head_size or n_embd // n_head
        D = n_head * self.head_size  # == n_embd unless heads were pruned
        self.c_attn = nn.Linear(n_embd, 3 * D, bias=bias)
        self.c_proj = nn.Linear(D, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, _ = x.shape
        hs = self.head_size
        C = self.n_head * hs  # the attention width (n_embd unless heads were pruned)
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, H * hs)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, H, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, H, T, hs)
        p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, H, T, hs)
        else:
            start = cache.pos
            k, v = cache.update(layer, k, v)  # (B, H, L, hs), L = start + T
            if k.dtype != q.dtype:  # e.g. an fp32 cache under bf16 autocast
                k, v = k.to(q.dtype), v.to(q.dtype)
            if T == 1 or start == 0:  # one new token sees everything; a prefill from 0 is plain causal
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=T > 1)
            else:  # a multi-token chunk at an offset: (T, L) mask, bottom-right aligned
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, H * hs)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: c_fc (C -> 4C), GELU, c_proj.

    ``approximate="tanh"`` is GPT-2's gelu_new; ``"none"`` the exact erf GELU of BERT. ``n_inner``
    (default 4C) is smaller when neurons were pruned.
    """

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True, approximate: str = "tanh",
                 n_inner: int | None = None) -> None:
        super().__init__()
        n_inner = n_inner or 4 * n_embd
        self.c_fc = nn.Linear(n_embd, n_inner, bias=bias)
        self.gelu = nn.GELU(approximate=approximate)
        self.c_proj = nn.Linear(n_inner, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)
