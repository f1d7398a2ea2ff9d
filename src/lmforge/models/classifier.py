"""A sequence-classification head on a pretrained backbone (transfer learning).

The backbone maps (idx, attention_mask) to hidden states (B, T, C): our GPT through ``features``
(causal: right padding does not change the states of real tokens), an encoder through its forward.
Pooling turns them into one vector per sequence:

- ``last``: the last real token (the only one a causal model lets see the whole text);
- ``cls``: the first token (BERT's [CLS]);
- ``mean``: the average over real tokens;
- ``max``: the per-feature maximum over real tokens (does any token carry this feature?);
- ``concat``: [last ; max ; mean] (3C), ULMFiT's concat pooling: the summary of a causal model,
  the strongest local evidence and the average, side by side.

>>> from lmforge.config import ModelConfig
>>> from lmforge.models.gpt import GPT
>>> clf = SequenceClassifier(GPT(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16)), 16, 2, "last")
>>> clf(torch.randint(0, 50, (3, 5)), torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])).shape
torch.Size([3, 2])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

POOLINGS = ("last", "cls", "mean", "max", "concat")
WIDTH = {"concat": 3}  # pooled width in multiples of n_embd (1 for the others)


def pool(h: Tensor, attention_mask: Tensor | None, how: str) -> Tensor:
    """(B, T, C) hidden states -> (B, C) by ``how`` (see the module docstring)."""
    if how == "cls":
        return h[:, 0]
    if how == "concat":
        return torch.cat([pool(h, attention_mask, k) for k in ("last", "max", "mean")], dim=-1)  # (B, 3C)
    if attention_mask is None:
        return {"last": h[:, -1], "max": h.amax(dim=1)}.get(how, h.mean(dim=1))
    mask = attention_mask.to(h.dtype)  # (B, T)
    if how == "last":
        last = attention_mask.long().sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real token
        return h[torch.arange(h.size(0), device=h.device), last]
    if how == "mean":
        return (h * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    if how == "max":
        return h.masked_fill(attention_mask.unsqueeze(-1) == 0, torch.finfo(h.dtype).min).amax(dim=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")


class SequenceClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, n_embd: int, num_labels: int, pooling: str = "last",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone, self.pooling = backbone, pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_embd * WIDTH.get(pooling, 1), num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def hidden_states(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if hasattr(self.backbone, "features"):  # a causal LM: padding is on the right, no mask needed
            return self.backbone.features(idx)
        return self.backbone(idx, attention_mask=attention_mask)

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Class logits (B, num_labels)."""
        pooled = pool(self.hidden_states(idx, attention_mask), attention_mask, self.pooling)  # (B, C)
        return self.head(self.dropout(pooled))
