"""LSTMSeq2Seq: the classic attentional LSTM encoder-decoder (Bahdanau et al., 2015; Luong et al., 2015).

The baseline the Transformer is compared with, behind the same interface (``forward``, ``encode``,
``decode``, ``new_state``, ``step``, ``reorder``). The encoder is a bidirectional LSTM of ``n_layer``
layers, n_embd // 2 wide per direction, so its outputs (the memory) are n_embd wide; the decoder is an
LSTM of ``n_decoder_layers`` layers, n_embd wide, started from the encoder's final states (top layer,
both directions) through ``bridge_h`` (tanh) and ``bridge_c``. Luong's global attention follows the
decoder LSTM: its top state h_t scores the memory, the context c_t is the weighted sum, and the
attentional state ``tanh(W_c [c_t; h_t])`` feeds ``lm_head``. The score is ``model.attention``:

- ``luong``: general, ``h_t^T W_a m_s``;
- ``bahdanau``: additive, ``v^T tanh(W_1 h_t + W_2 m_s)`` (Bahdanau's score in Luong's architecture, as
  OpenNMT's ``global_attention: mlp``).

There is no input feeding (Luong's section 3.3), so teacher forcing runs the decoder over all positions
at once. Padded source positions (``src_mask`` False; sources are right-padded) are packed away in the
encoder and take no attention weight. Shapes: B batch, S source length, T target tokens, C = n_embd,
L decoder layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmforge.config import ModelConfig
from lmforge.errors import UserError


class LuongAttention(nn.Module):
    """General score ``h^T W_a m``: the keys ``W_a m`` are computed once per source."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.w_a = nn.Linear(n_embd, n_embd, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        return self.w_a(memory)  # (B, S, C)

    def scores(self, h: Tensor, keys: Tensor) -> Tensor:
        return torch.matmul(h, keys.transpose(1, 2))  # (B, T, C) x (B, C, S) -> (B, T, S)


class BahdanauAttention(nn.Module):
    """Additive score ``v^T tanh(W_1 h + W_2 m)`` (``w_q`` = W_1, ``w_k`` = W_2 with the bias): the keys
    ``W_2 m`` are computed once per source."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(n_embd, n_embd, bias=False)
        self.w_k = nn.Linear(n_embd, n_embd, bias=True)
        self.v = nn.Linear(n_embd, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        return self.w_k(memory)  # (B, S, C)

    def scores(self, h: Tensor, keys: Tensor) -> Tensor:
        e = torch.tanh(self.w_q(h)[:, :, None, :] + keys[:, None, :, :])  # (B, T, S, C)
        return self.v(e).squeeze(-1)  # (B, T, S)


@dataclass
class LSTMMemory:
    """What :meth:`LSTMSeq2Seq.encode` returns: ``out`` the encoder outputs (B, S, C) (zeros at padding),
    ``keys`` their projection for the attention score (B, S, C), ``h`` / ``c`` the decoder's initial
    state (L, B, C)."""

    out: Tensor
    keys: Tensor
    h: Tensor
    c: Tensor


@dataclass
class LSTMState:
    """Incremental decoding state: the memory (``out``, ``keys``), the source mask (B, S) bool, the decoder
    LSTM state ``h`` / ``c`` (L, B, C) after the ``pos`` tokens decoded so far, and ``max_len``."""

    out: Tensor
    keys: Tensor
    mask: Tensor
    h: Tensor
    c: Tensor
    pos: int
    max_len: int


class LSTMSeq2Seq(nn.Module):
    """Embeddings, a bidirectional LSTM encoder, an LSTM decoder with global attention, the output head.

    ``wte`` embeds the target tokens, and the source ones too when ``source_vocab_size`` is 0; otherwise
    ``src_wte`` embeds the source. ``lm_head`` (C -> vocab_size) reads the attentional state (C wide) and
    shares ``wte``'s weight with ``tie_weights``. No positions (``pos_emb`` is ignored) and no length limit
    but ``new_state``'s ``max_len``.

    >>> m = LSTMSeq2Seq(ModelConfig(name="lstm_seq2seq", vocab_size=50, n_layer=1, n_embd=16))
    >>> src, tgt = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    >>> m(src, torch.ones(2, 5, dtype=torch.bool), tgt).shape
    torch.Size([2, 3, 50])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise UserError("model.vocab_size is 0: set it (or take it from the tokenizer) before building the model")
        self.cfg = cfg
        C, L, p = cfg.n_embd, cfg.n_decoder_layers, cfg.dropout
        self.wte = nn.Embedding(cfg.vocab_size, C)
        if cfg.source_vocab_size:
            self.src_wte = nn.Embedding(cfg.source_vocab_size, C)
        self.drop = nn.Dropout(p)
        self.encoder = nn.LSTM(C, C // 2, num_layers=cfg.n_layer, batch_first=True, bidirectional=True,
                               dropout=p if cfg.n_layer > 1 else 0.0)
        self.bridge_h = nn.Linear(C, L * C)  # top encoder layer's final [fwd; bwd] -> every decoder layer
        self.bridge_c = nn.Linear(C, L * C)
        self.decoder = nn.LSTM(C, C, num_layers=L, batch_first=True, dropout=p if L > 1 else 0.0)
        self.attn = LuongAttention(C) if cfg.attention == "luong" else BahdanauAttention(C)
        self.w_c = nn.Linear(2 * C, C, bias=cfg.bias)  # [context; h] -> attentional state
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        for w in self.parameters():  # the classic recipe (Luong et al. 2015, OpenNMT): every parameter U(-0.1, 0.1)
            nn.init.uniform_(w, -0.1, 0.1)

    def forward(self, src: Tensor, src_mask: Tensor, tgt: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, vocab_size) for sources ``src`` (B, S), ``src_mask`` (B, S) (True = token)
        and decoder inputs ``tgt`` (B, T)."""
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    def encode(self, src: Tensor, src_mask: Tensor) -> LSTMMemory:
        """The :class:`LSTMMemory` of ``src`` (B, S), right-padded as ``src_mask`` (B, S) says."""
        B, S = src.shape
        if tuple(src_mask.shape) != (B, S):
            raise ValueError(f"src_mask has shape {tuple(src_mask.shape)}, expected {(B, S)} like src")
        C, L = self.cfg.n_embd, self.cfg.n_decoder_layers
        lengths = src_mask.bool().sum(dim=1).clamp(min=1)  # (B,)
        x = self.drop((self.src_wte if self.cfg.source_vocab_size else self.wte)(src))  # (B, S, C)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.encoder(packed)  # h, c: (2 * n_layer, B, C/2), each row's state at its own end
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, C)
        out = self.drop(out)
        top_h, top_c = torch.cat([h[-2], h[-1]], dim=-1), torch.cat([c[-2], c[-1]], dim=-1)  # (B, C) each
        h0 = torch.tanh(self.bridge_h(top_h)).view(B, L, C).transpose(0, 1).contiguous()  # (L, B, C)
        c0 = self.bridge_c(top_c).view(B, L, C).transpose(0, 1).contiguous()  # (L, B, C)
        return LSTMMemory(out, self.attn.keys(out), h0, c0)

    def _head(self, y: Tensor, out: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """Decoder top states y (B, T, C) -> logits (B, T, V): attention over the memory, attentional state, head."""
        scores = self.attn.scores(y, keys)  # (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
        context = torch.matmul(scores.softmax(dim=-1), out)  # (B, T, S) x (B, S, C) -> (B, T, C)
        h_att = torch.tanh(self.w_c(torch.cat([context, y], dim=-1)))  # (B, T, C)
        return self.lm_head(self.drop(h_att))  # (B, T, V)

    def decode(self, tgt: Tensor, memory: LSTMMemory, src_mask: Tensor) -> Tensor:
        """Logits (B, T, vocab_size) of decoder inputs ``tgt`` (B, T) over ``memory``; no state kept."""
        y, _ = self.decoder(self.drop(self.wte(tgt)), (memory.h, memory.c))  # (B, T, C)
        return self._head(y, memory.out, memory.keys, src_mask.bool())

    def new_state(self, memory: LSTMMemory, src_mask: Tensor, max_len: int | None = None) -> LSTMState:
        """A decoding state for up to ``max_len`` target tokens (default block_size; any positive length works)."""
        max_len = self.cfg.block_size if max_len is None else max_len
        if max_len <= 0:
            raise ValueError(f"decoding state max_len must be positive, got {max_len}")
        return LSTMState(memory.out, memory.keys, src_mask.bool(), memory.h, memory.c, 0, max_len)

    def step(self, tgt_new: Tensor, state: LSTMState) -> Tensor:
        """Logits (B, t, vocab_size) of the next ``t`` >= 1 target tokens ``tgt_new`` (B, t); the LSTM runs over
        them from the state's ``h`` / ``c``, which are replaced by the state after the last one."""
        t = tgt_new.shape[1]
        if state.pos + t > state.max_len:
            raise ValueError(f"decoding state full: {state.pos} decoded + {t} new tokens > max_len {state.max_len}")
        y, (state.h, state.c) = self.decoder(self.drop(self.wte(tgt_new)), (state.h, state.c))  # y: (B, t, C)
        state.pos += t
        return self._head(y, state.out, state.keys, state.mask)

    def reorder(self, state: LSTMState, index: Tensor, same_sources: bool = False) -> LSTMState:
        """A new state whose row j is row ``index[j]`` of ``state`` (B' = len(index) may differ from B);
        ``same_sources``: each new row has the source of the row it replaces, so the memory is kept."""
        index = index.to(state.mask.device)
        memory = (state.out, state.keys, state.mask)
        rows = memory if same_sources else [t.index_select(0, index) for t in memory]  # batch-first
        h, c = state.h.index_select(1, index), state.c.index_select(1, index)  # (L, B', C)
        return LSTMState(*rows, h, c, state.pos, state.max_len)

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
