"""ViT (Dosovitskiy et al., 2021): an image as a sequence of patches through the encoder layers BERT uses.

Patch embedding (a conv with kernel = stride = ``patch_size``: C x p x p pixels -> ``n_embd``), a class token
(``pooling: cls``) or the mean of the patch tokens (``pooling: mean``), learned position embeddings, dropout,
``n_layer`` :class:`lmforge.models.bert.Layer` blocks (pre-LN with ``norm_first``, as the paper; then a final
LayerNorm), and a linear head. Input (B, C, H, W) pixels in [0, 1] (normalised by :class:`ImageModel`); ``forward`` returns logits (B, num_classes).
Shapes: N = (H / p) * (W / p) patches, C width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.bert import Layer
from lmforge.models.cnn import ImageModel, check_input
from lmforge.models.layers import Dropout


class ViT(ImageModel):
    """>>> m = ViT(ModelConfig(name="vit", image_size=8, in_channels=1, num_classes=10, patch_size=4, n_embd=16))
    >>> m(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_input(cfg, cfg.patch_size)
        self._init_stats(cfg.in_channels)
        C, n = cfg.n_embd, (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(cfg.in_channels, C, cfg.patch_size, stride=cfg.patch_size)
        self.pooling = cfg.pooling
        self.cls = nn.Parameter(torch.zeros(1, 1, C)) if cfg.pooling == "cls" else None
        self.pos = nn.Parameter(torch.randn(1, n + (cfg.pooling == "cls"), C) * 0.02)
        self.drop = Dropout(cfg.dropout)
        self.h = nn.ModuleList(Layer(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(C, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()
        self.head = nn.Linear(C, cfg.num_classes)
        # Linear layers keep PyTorch's default init (std ~ 1 / sqrt(3 fan_in)): at these widths the paper's
        # trunc-normal 0.02 starts so small that a 2-layer, width-32 ViT barely moves in 100 steps on digits

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> logits (B, K)."""
        t = self.patch(self.normalize(x)).flatten(2).transpose(1, 2)  # (B, N, C)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)  # (B, 1 + N, C)
        t = self.drop(t + self.pos)
        for layer in self.h:
            t = layer(t)
        t = self.ln_f(t)
        return self.head(t[:, 0] if self.cls is not None else t.mean(dim=1))  # (B, K)
