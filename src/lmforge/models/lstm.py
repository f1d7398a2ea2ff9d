"""The classic baseline: Embedding -> (bi)LSTM -> dropout -> Linear, a sequence classifier.

It sits in the same results tables as the Transformers, trained by the same ``fit()``: ``forward``
takes token ids and an optional padding mask and returns class logits (B, num_labels).

>>> m = LSTMClassifier(vocab_size=50, n_embd=16, hidden=8, n_layer=1, num_labels=3)
>>> m(torch.randint(1, 50, (4, 7)), torch.ones(4, 7, dtype=torch.long)).shape
torch.Size([4, 3])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence


class LSTMClassifier(nn.Module):
    def __init__(self, vocab_size: int, n_embd: int, hidden: int, n_layer: int, num_labels: int,
                 dropout: float = 0.0, bidirectional: bool = True, pad_id: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, n_embd, padding_idx=pad_id)
        self.lstm = nn.LSTM(n_embd, hidden, num_layers=n_layer, batch_first=True, bidirectional=bidirectional,
                            dropout=dropout if n_layer > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_labels)

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, num_labels); ``attention_mask`` (B, T) is 1 on tokens, 0 on right padding."""
        B, T = idx.shape
        lengths = attention_mask.sum(dim=1).clamp(min=1) if attention_mask is not None else torch.full((B,), T)
        x = self.embed(idx)  # (B, T, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: (layers * directions, B, H), the last real token of each row
        if self.lstm.bidirectional:
            last = torch.cat([h[-2], h[-1]], dim=-1)  # (B, 2H): forward and backward final states
        else:
            last = h[-1]  # (B, H)
        return self.head(self.dropout(last))  # (B, num_labels)
