"""Seq2SeqTransformer: the encoder-decoder Transformer of Vaswani et al. (2017), for translation.

The encoder is a stack of bidirectional self-attention layers (:class:`lmforge.models.bert.Layer`, the
source padding mask hides padded keys); each decoder block has causal self-attention
(:class:`~lmforge.models.layers.CausalSelfAttention`, with a :class:`~lmforge.models.layers.KVCache` for
incremental decoding), cross-attention over the encoder memory (:class:`CrossAttention`) and an MLP.
Post-LN layers by default (the 2017 paper), pre-LN with ``norm_first`` (then each stack ends with ``ln_f``).

Names follow GPT-2's vocabulary (``wte``, ``wpe``, ``h.N.attn.c_attn``, ``c_proj``, ``ln_1``, ...); the
cross-attention uses HF GPT-2's ``add_cross_attention`` names (``q_attn``, ``c_attn`` = key | value).
Shapes: B batch, S source length, T target tokens, C width, H heads, hs head size.
``forward`` returns logits; the loss lives in the task.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.models.bert import Layer as EncoderLayer
from lmforge.models.layers import MLP, CausalSelfAttention, Dropout, KVCache, padded_attention, rope_table, sinusoidal_positions


class CrossAttention(nn.Module):
    """Multi-head attention of the decoder's queries over the encoder memory: ``q_attn`` (C -> C) projects
    the decoder states, the fused ``c_attn`` (C -> 2C, key | value) the memory, ``c_proj`` merges the heads.

    :meth:`kv` projects the memory once per source; :meth:`forward` reuses it at every decoding step.
    Padded source keys (``keep`` False) take no weight (:func:`~lmforge.models.layers.padded_attention`).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        assert n_embd % n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.head_size, self.dropout = n_head, n_embd // n_head, dropout
        self.q_attn = nn.Linear(n_embd, n_embd, bias=bias)
        self.c_attn = nn.Linear(n_embd, 2 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = Dropout(dropout)

    def kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory (B, S, C) -> k, v, each (B, H, S, hs)."""
        B, S, C = memory.shape
        k, v = (t.view(B, S, self.n_head, self.head_size).transpose(1, 2) for t in self.c_attn(memory).split(C, dim=2))
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], keep: Tensor) -> Tensor:
        """x (B, T, C), ``kv`` from :meth:`kv`, ``keep`` bool (B, 1, 1, S), True = a real source token -> (B, T, C)."""
        B, T, C = x.shape
        q = self.q_attn(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, H, T, hs)
        k, v = kv
        if k.dtype != q.dtype:  # e.g. memory projected outside autocast, decoded inside
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = padded_attention(q, k, v, keep, self.dropout if self.training else 0.0)  # (B, H, T, hs)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))  # (B, T, C)


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention, MLP; each a residual branch with its LayerNorm (``ln_1`` .. ``ln_3``).
    Post-LN: x = ln(x + f(x)); pre-LN (``norm_first``): x = x + f(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C = cfg.n_embd
        self.attn = CausalSelfAttention(C, cfg.n_head, cfg.dropout, cfg.bias)
        self.ln_1 = nn.LayerNorm(C, eps=cfg.norm_eps, bias=cfg.bias)
        self.cross = CrossAttention(C, cfg.n_head, cfg.dropout, cfg.bias)
        self.ln_2 = nn.LayerNorm(C, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(C, cfg.dropout, cfg.bias, approximate="none")  # exact erf GELU, like the encoder's
        self.ln_3 = nn.LayerNorm(C, eps=cfg.norm_eps, bias=cfg.bias)
        self.norm_first = cfg.norm_first

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], keep: Tensor, cache: KVCache | None = None,
                layer: int = 0, rope: Tensor | None = None) -> Tensor:
        if self.norm_first:
            x = x + self.attn(self.ln_1(x), cache, layer, rope)  # (B, T, C)
            x = x + self.cross(self.ln_2(x), kv, keep)  # (B, T, C)
            return x + self.mlp(self.ln_3(x))  # (B, T, C)
        x = self.ln_1(x + self.attn(x, cache, layer, rope))  # (B, T, C)
        x = self.ln_2(x + self.cross(x, kv, keep))  # (B, T, C)
        return self.ln_3(x + self.mlp(x))  # (B, T, C)


@dataclass
class Seq2SeqState:
    """Incremental decoding state of a :class:`Seq2SeqTransformer` (made by ``new_state``).

    ``cache``: the decoder self-attention keys / values (one layer per decoder block; ``cache.pos`` = target
    tokens decoded so far); ``cross``: per decoder block the memory's cross-attention (k, v), each
    (B, H, S, hs), computed once; ``keep``: the source mask as bool (B, 1, 1, S).
    """

    cache: KVCache
    cross: list[tuple[Tensor, Tensor]]
    keep: Tensor


class Seq2SeqTransformer(nn.Module):
    """Embeddings, an encoder of ``n_layer`` layers, a decoder of ``n_decoder_layers`` blocks, the output head.

    ``wte`` embeds the target tokens, and the source ones too when ``source_vocab_size`` is 0 (one joint
    vocabulary); otherwise ``src_wte`` (source_vocab_size, C) embeds the source. ``lm_head`` (C -> vocab_size)
    shares ``wte``'s weight with ``tie_weights``. Positions: learned (``encoder.wpe`` / ``decoder.wpe``), the
    sinusoidal table (non-persistent buffer ``pos_table``, sines then cosines as in Marian; the embeddings are
    then scaled by sqrt(C) as in Vaswani et al.), or rotary (buffer ``rope``, on q and k of the self-attention
    of both stacks; none on cross-attention).

    >>> m = Seq2SeqTransformer(ModelConfig(name="seq2seq", vocab_size=50, n_layer=1, n_embd=16, n_head=2, block_size=8))
    >>> src, tgt = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    >>> m(src, torch.ones(2, 5, dtype=torch.bool), tgt).shape
    torch.Size([2, 3, 50])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise UserError("model.vocab_size is 0: set it (or take it from the tokenizer) before building the model")
        self.cfg = cfg
        C, learned = cfg.n_embd, cfg.pos_emb == "learned"
        self.wte = nn.Embedding(cfg.vocab_size, C)
        if cfg.source_vocab_size:
            self.src_wte = nn.Embedding(cfg.source_vocab_size, C)
        self.encoder = nn.ModuleDict(dict(
            **({"wpe": nn.Embedding(cfg.block_size, C)} if learned else {}),
            drop=Dropout(cfg.dropout),
            h=nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.n_layer)),
            **({"ln_f": nn.LayerNorm(C, eps=cfg.norm_eps, bias=cfg.bias)} if cfg.norm_first else {}),
        ))
        self.decoder = nn.ModuleDict(dict(
            **({"wpe": nn.Embedding(cfg.block_size, C)} if learned else {}),
            drop=Dropout(cfg.dropout),
            h=nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_decoder_layers)),
            **({"ln_f": nn.LayerNorm(C, eps=cfg.norm_eps, bias=cfg.bias)} if cfg.norm_first else {}),
        ))
        self.emb_scale = math.sqrt(C) if cfg.pos_emb == "sinusoidal" else 1.0
        if cfg.pos_emb == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(cfg.block_size, C, halves=True), persistent=False)
        elif cfg.pos_emb == "rope":
            self.register_buffer("rope", rope_table(cfg.block_size, cfg.head_size, cfg.rope_theta), persistent=False)
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        # GPT-2's init: N(0, 0.02); residual projections scaled by 1/sqrt(residual branches of their stack)
        self.apply(self._init_weights)
        branches = {"encoder": 2 * cfg.n_layer, "decoder": 3 * cfg.n_decoder_layers}
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(branches[name.split(".")[0]]))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, src: Tensor, src_mask: Tensor, tgt: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, vocab_size) for sources ``src`` (B, S), ``src_mask`` (B, S) (True = token)
        and decoder inputs ``tgt`` (B, T)."""
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    def _embed(self, wte: nn.Embedding, stack: nn.ModuleDict, idx: Tensor, start: int) -> tuple[Tensor, Tensor | None]:
        """Token (+ position) embeddings (B, T, C) of ``idx`` (B, T) at positions [start, start + T), after
        dropout, and the rotary rows (2, T, hs/2) of those positions (``pos_emb=rope``, else None)."""
        T = idx.shape[1]
        if start + T > self.cfg.block_size:
            where = f" at position {start}" if start else ""
            raise ValueError(f"sequence of {T} tokens{where} exceeds block_size {self.cfg.block_size}")
        x, rope = wte(idx) * self.emb_scale, None  # (B, T, C)
        if self.cfg.pos_emb == "rope":
            rope = self.rope[:, start : start + T]  # (2, T, hs/2)
        else:
            table = stack.wpe.weight if self.cfg.pos_emb == "learned" else self.pos_table
            x = x + table[start : start + T]  # (T, C) broadcast over the batch
        return stack.drop(x), rope

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """The encoder memory (B, S, C) of ``src`` (B, S); rows at padded positions are computed but never read."""
        if tuple(src_mask.shape) != tuple(src.shape):
            raise ValueError(f"src_mask has shape {tuple(src_mask.shape)}, expected {tuple(src.shape)} like src")
        x, rope = self._embed(self.src_wte if self.cfg.source_vocab_size else self.wte, self.encoder, src, 0)
        keep = src_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder.h:
            x = layer(x, keep, rope)  # (B, S, C)
        return self.encoder.ln_f(x) if self.cfg.norm_first else x

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """Logits (B, T, vocab_size) of decoder inputs ``tgt`` (B, T) over ``memory`` (B, S, C); no cache."""
        cross = [block.cross.kv(memory) for block in self.decoder.h]
        return self.lm_head(self.features(tgt, cross, src_mask.bool()[:, None, None, :]))

    def features(self, tgt: Tensor, cross: list[tuple[Tensor, Tensor]], keep: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final decoder states (B, T, C) (what ``lm_head`` reads); ``cross`` and ``keep`` as in
        :class:`Seq2SeqState`. With a ``cache`` the tokens sit at positions [cache.pos, cache.pos + T), their
        self-attention keys / values are appended and ``cache.pos`` advances by T."""
        T, start = tgt.shape[1], 0 if cache is None else cache.pos
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"decoding state full: {start} decoded + {T} new tokens > max_len {cache.max_len}")
        x, rope = self._embed(self.wte, self.decoder, tgt, start)  # (B, T, C)
        for i, block in enumerate(self.decoder.h):
            x = block(x, cross[i], keep, cache, i, rope)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        return self.decoder.ln_f(x) if self.cfg.norm_first else x

    def new_state(self, memory: Tensor, src_mask: Tensor, max_len: int | None = None) -> Seq2SeqState:
        """A decoding state for up to ``max_len`` target tokens (default and limit: block_size): an empty
        :class:`KVCache` (in the autocast dtype when autocast is on, else the memory's) and the
        cross-attention K / V of every decoder block, computed here once."""
        max_len = self.cfg.block_size if max_len is None else max_len
        if not 0 < max_len <= self.cfg.block_size:
            raise ValueError(f"decoding state max_len must be in [1, block_size={self.cfg.block_size}], got {max_len}")
        device = memory.device
        on = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if on else memory.dtype
        n = self.cfg.n_decoder_layers
        cache = KVCache(memory.shape[0], self.cfg.n_head, max_len, self.cfg.head_size, dtype, device, n_layer=n)
        cross = [block.cross.kv(memory) for block in self.decoder.h]
        return Seq2SeqState(cache, cross, src_mask.bool()[:, None, None, :])

    def step(self, tgt_new: Tensor, state: Seq2SeqState) -> Tensor:
        """Logits (B, t, vocab_size) of the next ``t`` >= 1 target tokens ``tgt_new`` (B, t), at the positions
        after those already in ``state`` (``state.cache.pos``); appends them to the state."""
        return self.lm_head(self.features(tgt_new, state.cross, state.keep, state.cache))

    def reorder(self, state: Seq2SeqState, index: Tensor, same_sources: bool = False) -> Seq2SeqState:
        """A new state whose row j is row ``index[j]`` of ``state`` (B' = len(index) may differ from B: beam
        expansion repeats rows); ``state`` itself is left unchanged. Only the ``pos`` cached positions are
        copied. ``same_sources``: every new row has the source of the row it replaces (beams reordered within
        their sentences, none dropped), so the cross-attention keys / values and the mask are kept as they are."""
        index = index.to(state.keep.device)
        cache, pos = copy.copy(state.cache), state.cache.pos  # same max_len and pos, new buffers

        def pick(buf: Tensor) -> Tensor:  # (B, H, max_len, hs) -> (B', H, max_len, hs), [pos:] left unwritten
            out = buf.new_empty((len(index), *buf.shape[1:]))
            out[:, :, :pos] = buf[:, :, :pos].index_select(0, index)
            return out

        cache.k, cache.v = [pick(k) for k in state.cache.k], [pick(v) for v in state.cache.v]
        cache.batch_size = len(index)
        if same_sources:
            return Seq2SeqState(cache, state.cross, state.keep)
        cross = [(k.index_select(0, index), v.index_select(0, index)) for k, v in state.cross]
        return Seq2SeqState(cache, cross, state.keep.index_select(0, index))

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
