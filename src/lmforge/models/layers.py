"""Shared Transformer primitives: causal self-attention, MLP, sinusoidal and rotary positions, RMSNorm, a static KV cache.

Model files (``gpt.py`` and later families) build from these; nothing here knows about training.
Shapes: B batch, T new tokens, C width (n_embd), H heads, hs head size (C // H), L cached length.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(T: int, C: int, halves: bool = False) -> Tensor:
    """The fixed sin / cos position table of Vaswani et al. (2017), float32, shape (T, C).

    ``PE[pos, 2i] = sin(pos / 10000^(2i/C))`` and ``PE[pos, 2i+1] = cos(pos / 10000^(2i/C))``,
    computed in float64 then rounded. An odd ``C`` ends with a sine column. ``halves`` puts the same
    columns in another order: the ceil(C/2) sines first, then the cosines (tensor2tensor's and
    Marian's layout; the seq2seq model uses it, so its runs export to ``MarianMTModel`` or, pre-LN, Pegasus).

    >>> sinusoidal_positions(2, 4)
    tensor([[0.0000, 1.0000, 0.0000, 1.0000],
            [0.8415, 0.5403, 0.0100, 0.9999]])
    >>> sinusoidal_positions(2, 4, halves=True)
    tensor([[0.0000, 0.0000, 1.0000, 1.0000],
            [0.8415, 0.0100, 0.5403, 0.9999]])
    """
    pos = torch.arange(T, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    two_i = torch.arange(0, C, 2, dtype=torch.float64)  # (ceil(C/2),)
    angle = pos / torch.pow(10000.0, two_i / C)  # (T, ceil(C/2))
    sin, cos = torch.sin(angle), torch.cos(angle[:, : C // 2])
    if halves:
        return torch.cat([sin, cos], dim=1).float()
    pe = torch.empty(T, C, dtype=torch.float64)
    pe[:, 0::2] = sin
    pe[:, 1::2] = cos
    return pe.float()


def rope_table(T: int, hs: int, theta: float = 10000.0) -> Tensor:
    """The cos / sin of rotary position embeddings (Su et al., 2021), float32, shape (2, T, hs // 2).

    Position ``pos`` rotates the pair (x[i], x[i + hs/2]) of a head by ``pos * theta^(-2i/hs)``
    (the half-split layout of GPT-NeoX / Llama); computed in float64 then rounded.

    >>> rope_table(2, 4)[:, 1]
    tensor([[0.5403, 0.9999],
            [0.8415, 0.0100]])
    """
    inv_freq = theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # (T, hs/2)
    return torch.stack((angle.cos(), angle.sin())).float()


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate x (B, H, T, hs) by ``rope`` (2, T, hs // 2), the :func:`rope_table` rows of its T positions.
    Computed in x's dtype (the table is cast), so bf16 autocast stays bf16."""
    cos, sin = rope.to(x.dtype)  # 2 x (T, hs/2)
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, H, T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` over the last dimension that also runs where the fused kernel does not: the gain is cast
    to the input's dtype (bf16 under autocast), and under ONNX export (opset 17 has no RMSNorm) the formula
    ``x / sqrt(mean(x^2) + eps) * gain`` is spelled out."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        if torch.onnx.is_in_onnx_export():
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


def norm_layer(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """``nn.LayerNorm`` (``kind="layernorm"``, with a bias if ``bias``) or :class:`RMSNorm` (``"rmsnorm"``, a gain only)."""
    return RMSNorm(dim, eps=eps) if kind == "rmsnorm" else nn.LayerNorm(dim, eps=eps, bias=bias)


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


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``, with a cheaper mask on CPU: one int32 draw gives two int16 lanes,
    and a lane keeps its element when it is at least ``round(p * 2^16) - 2^15``. So p is rounded to a
    multiple of 2^-16 and the kept elements are scaled by 1 / (1 - that p): the expectation stays x.
    CPU's ``bernoulli_`` draws one value per element (a fifth of a bf16 translation step here,
    docs/results.md); this halves the mask's cost. Other devices keep ``F.dropout`` (fused there)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    cut = int(round(p * 65536))
    n = x.numel()
    lanes = torch.empty((n + 1) // 2, dtype=torch.int32).random_(-(2**31), 2**31 - 1).view(torch.int16)
    keep = lanes[:n].view(x.shape) >= cut - 32768
    return x * keep * (65536 / (65536 - cut))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`dropout`'s cheaper CPU mask (same ``p``, ``inplace`` ignored, state dict empty)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """``softmax(q k^T / sqrt(hs), masked) v``: two matmuls and a softmax, all in q's dtype.

    q (B, H, T, hs), k and v (B, H, L, hs), ``mask`` bool broadcastable to (B, H, T, L), e.g. (T, L)
    causal or (B, 1, 1, L) padding, True = may attend (None: all); masked scores get the dtype's min, so
    a row with no key left stays finite (uniform), as SDPA's additive-bias path does. For bf16 on CPU
    this is ~1.6-4x faster than SDPA in training at T <= 128 and 1.6-6x faster for one decoded token
    (docs/results.md). Precision: the CPU softmax kernel computes in float32 and rounds once (a bf16
    softmax equals the float32 softmax of the same scores rounded to bf16), and 1/sqrt(hs) is exact for hs = 4^n.
    """
    att = torch.matmul(q * (1.0 / math.sqrt(q.size(-1))), k.transpose(-2, -1))  # (B, H, T, L)
    if mask is not None:
        att = att.masked_fill_(~mask, torch.finfo(att.dtype).min)
    att = att.softmax(dim=-1)
    if dropout_p > 0:
        att = dropout(att, dropout_p)
    return torch.matmul(att, v)  # (B, H, T, hs)


def padded_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """Attention of q (B, H, T, hs) over k, v (B, H, L, hs) with a padding mask ``keep`` (bool (B, 1, 1, L),
    True = a real key; None = all) -> (B, H, T, hs). In bf16 / fp16 on CPU :func:`softmax_attention`
    (SDPA's CPU kernel is 2-4x slower there in training at these lengths, docs/results.md); elsewhere SDPA
    with an additive bias in q's dtype (0 to keep, the dtype's min to drop)."""
    if q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu":
        return softmax_attention(q, k, v, keep, dropout_p)
    bias = None
    if keep is not None:
        bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, torch.finfo(q.dtype).min)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


class MultiHeadAttention(nn.Module):
    """The projections of multi-head self-attention, shared by the causal (GPT) and bidirectional (BERT)
    kinds: a fused QKV (``c_attn``: C -> 3C, q | k | v) and ``c_proj``, GPT-2's names. With pruned heads
    (``head_size`` given, H * hs < C): ``c_attn`` C -> 3 * H * hs, ``c_proj`` H * hs -> C. Subclasses
    write ``forward``: :meth:`qkv`, their attention, :meth:`out`."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 head_size: int | None = None, qk_norm: bool = False, norm_eps: float = 1e-5) -> None:
        super().__init__()
        assert head_size is not None or n_embd % n_head == 0, "n_embd must be divisible by n_head"
        self.head_size = head_size or n_embd // n_head
        D = n_head * self.head_size  # == n_embd unless heads were pruned
        self.c_attn = nn.Linear(n_embd, 3 * D, bias=bias)
        self.c_proj = nn.Linear(D, n_embd, bias=bias)
        self.resid_dropout = Dropout(dropout)
        self.n_head, self.dropout, self.qk_norm = n_head, dropout, qk_norm
        if qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.head_size, eps=norm_eps), RMSNorm(self.head_size, eps=norm_eps)

    def qkv(self, x: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) -> q, k, v, each (B, H, T, hs): q and k RMS-normalized (``qk_norm``), then rotated by
        ``rope`` (2, T, hs // 2) if given."""
        B, T, _ = x.shape
        H, hs = self.n_head, self.head_size
        q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in self.c_attn(x).split(H * hs, dim=2))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q, k, v

    def out(self, y: Tensor) -> Tensor:
        """The heads' outputs y (B, H, T, hs) -> (B, T, C): merged, projected, dropout."""
        B, H, T, hs = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, H * hs)))


class CausalSelfAttention(MultiHeadAttention):
    """Multi-head causal self-attention with a fused QKV projection (GPT-2 names: c_attn, c_proj).

    Without a cache: SDPA with ``is_causal``. With a :class:`KVCache`: the T new queries at positions
    ``[pos, pos + T)`` attend over all ``pos + T`` cached keys; query i sees key j iff ``j <= pos + i``
    (for T == 1 that is every key, for pos == 0 it is the usual causal mask). In bf16 / fp16 on CPU
    (autocast or a bf16 model) the attention is :func:`softmax_attention` instead of SDPA.

    ``head_size`` (default n_embd // n_head) is given when heads were pruned: then H * hs < C, and
    ``c_attn`` maps C -> 3 * H * hs, ``c_proj`` H * hs -> C.

    ``qk_norm``: q and k are RMS-normalized per head over hs (``q_norm`` / ``k_norm``, one gain of hs
    shared by the heads). ``rope`` given to :meth:`forward` rotates q and k after that; the cache holds
    rotated keys.
    """

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0, rope: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); ``rope`` (2, T, hs // 2): the :func:`rope_table` rows of the T positions."""
        T = x.shape[1]
        q, k, v = self.qkv(x, rope)  # (B, H, T, hs) each
        p = self.dropout if self.training else 0.0
        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)  # (B, H, L, hs), L = start + T
            if k.dtype != q.dtype:  # e.g. an fp32 cache under bf16 autocast
                k, v = k.to(q.dtype), v.to(q.dtype)
        if q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu":
            # SDPA's CPU kernel is slow in bf16 (no faster than fp32 in training, 1.6-6x slower than this
            # for one decoded token): two bf16 matmuls and a softmax
            one = cache is not None and T == 1  # one new token sees everything
            mask = None if one else torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = softmax_attention(q, k, v, mask, p)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, H, T, hs)
        elif T == 1 or start == 0:  # one new token sees everything; a prefill from 0 is plain causal
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=T > 1)
        else:  # a multi-token chunk at an offset: (T, L) mask, bottom-right aligned
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y)


class MLP(nn.Module):
    """Position-wise feed-forward: c_fc (C -> I), activation, c_proj (I -> C), I = ``n_inner`` (default 4C,
    smaller when neurons were pruned).

    ``activation``: ``"gelu"`` (``approximate="tanh"`` is GPT-2's gelu_new, ``"none"`` the exact erf GELU
    of BERT), ``"relu2"`` (relu(h)^2) or ``"swiglu"``: c_fc maps C -> 2I, gate rows then up rows, and
    the hidden vector is silu(gate) * up.
    """

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True, approximate: str = "tanh",
                 n_inner: int | None = None, activation: str = "gelu") -> None:
        super().__init__()
        n_inner = n_inner or 4 * n_embd
        self.activation = activation
        self.c_fc = nn.Linear(n_embd, 2 * n_inner if activation == "swiglu" else n_inner, bias=bias)
        if activation == "gelu":
            self.gelu = nn.GELU(approximate=approximate)
        self.c_proj = nn.Linear(n_inner, n_embd, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)  # (B, T, I), swiglu (B, T, 2I)
        if self.activation == "gelu":
            h = self.gelu(h)
        elif self.activation == "relu2":
            h = F.relu(h).square()
        else:  # swiglu
            gate, up = h.chunk(2, dim=-1)  # 2 x (B, T, I)
            h = F.silu(gate) * up
        return self.dropout(self.c_proj(h))  # (B, T, C)


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose weight is prepacked for oneDNN (made by :func:`for_decode`).

    Same ``y = x W^T + b`` as the Linear it replaces; the packed weight is an opaque oneDNN tensor, so
    the layer has no parameters and no state-dict entries (train or save the original model instead).
    """

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), 1)  # tuned for one row
        self.bias = None if lin.bias is None else lin.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedInt8Linear(nn.Module):
    """Decode wrapper of an :class:`lmforge.models.quantize.Int8Linear` (made by :func:`for_decode`).

    A one-row input is quantized as ``Int8Linear`` does (symmetric int8 with the row's own scale
    ``max|x| / 127``) and multiplied by a copy of the int8 weight prepacked for fbgemm, which streams it
    ~1.4x faster than ``torch._int_mm`` at one row; the int32 products are exact, so results differ
    from the layer's only by float rounding (fbgemm quantizes with ``x * (1/s)``, applies both scales
    at once). Longer inputs (a prefill) run the wrapped layer unchanged. Inference only.
    """

    def __init__(self, q: nn.Module) -> None:
        super().__init__()
        self.inner, self.in_features, self.out_features = q, q.in_features, q.out_features
        zero = torch.zeros(q.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated (fbgemm stays)
            warnings.simplefilter("ignore")
            w = torch._make_per_channel_quantized_tensor(q.weight_int8, q.weight_scale.double(), zero, 0)
            self.packed = torch.ops.quantized.linear_prepack(w, q.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() != self.in_features:
            return self.inner(x)
        # Int8Linear's per-token scale max|x| / 127 (fp32 max; the double quotient rounds to the same fp32)
        s = max(torch.linalg.vector_norm(x, float("inf")).item(), 1e-12) / 127.0
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x.reshape(1, -1), s, 128, self.packed)
        return y.view(*x.shape[:-1], self.out_features)


def _int8_packable() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines or "x86" in torch.backends.quantized.supported_engines


def for_decode(model: nn.Module) -> nn.Module:
    """Lay out a CPU model's ``nn.Linear`` weights for batch-1 decoding, in place; returns ``model``.

    A decode step multiplies one row by each weight matrix, so its speed is how fast the weights
    stream from memory, and that depends on the kernel the weight's layout selects:

    - float32: each weight keeps its shape, values and Parameter but is stored input-major (as
      GPT-2's Conv1D; ``w.t().contiguous().t()``), which MKL multiplies 1.3-2.2x faster for one row.
      The model can still be trained and saved;
    - bfloat16: each Linear becomes a :class:`PackedLinear` (a oneDNN-prepacked weight, ~1.4x faster
      than ``F.linear``). Inference only from then on;
    - int8 (``lmforge compress``'s ``Int8Linear``): wrapped in a :class:`PackedInt8Linear` (an
      fbgemm-prepacked copy of the int8 weight for one-row inputs). Inference only from then on.

    Embeddings, norms and non-CPU weights are left alone. Outputs are those of the unchanged model up
    to float rounding (greedy tokens agree; ``tests/tools/test_generate.py``).
    """
    bf16_ok = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    swaps: list[tuple[str, type]] = []
    for name, m in model.named_modules():
        if type(m).__name__ == "Int8Linear" and m.weight_int8.device.type == "cpu" and _int8_packable():
            swaps.append((name, PackedInt8Linear))
        if type(m) is not nn.Linear or m.weight.device.type != "cpu":
            continue
        if m.weight.dtype == torch.float32 and not m.weight.t().is_contiguous():
            m.weight.data = m.weight.data.t().contiguous().t()  # same Parameter (ties stay), new strides
        elif m.weight.dtype == torch.bfloat16 and bf16_ok:
            swaps.append((name, PackedLinear))
    for name, cls in swaps:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        try:
            setattr(owner, child, cls(getattr(owner, child)))
        except (RuntimeError, AttributeError, NotImplementedError):  # a torch without that kernel: keep the layer
            pass
    return model
