"""Convolutional image classifiers: the classic CNN (conv -> ReLU -> pool blocks, then fully connected) and a
small ResNet (He et al., 2016: basic blocks with identity shortcuts). Input (B, C, H, W) pixels in [0, 1];
each image model normalises them itself with the train split's channel mean / std (:class:`ImageModel`'s
buffers, saved with the weights, so an exported or served model takes plain pixels); ``forward`` returns
logits (B, num_classes).

Shapes: B batch, C channels, H x W pixels, K classes. Both take ``model.stage_widths`` (one width per
stage) and ``model.n_layer`` (convolutions per CNN stage, basic blocks per ResNet stage); ``channels_last``
keeps activations in NHWC, which oneDNN / cuDNN convolutions often prefer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.models.layers import Dropout


def check_input(cfg: ModelConfig, downsample: int) -> None:
    if cfg.image_size <= 0 or cfg.in_channels <= 0 or cfg.num_classes < 2:
        raise UserError("model.image_size, model.in_channels and model.num_classes must be set (the recipe takes "
                        "them from the data) before an image model is built")
    if cfg.image_size < downsample:
        raise UserError(f"model.channels: {len(cfg.stage_widths)} stages halve a {cfg.image_size}-pixel image below one "
                        f"pixel; use fewer stages or a larger image.resize")


class ImageModel(nn.Module):
    """The base of the image models: buffers ``pixel_mean`` / ``pixel_std`` (1, C, 1, 1), set by the recipe
    from the train split (:meth:`set_stats`), and :meth:`normalize` applying them."""

    def _init_stats(self, channels: int) -> None:
        self.register_buffer("pixel_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("pixel_std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def set_stats(self, mean: list[float], std: list[float]) -> None:
        self.pixel_mean.copy_(torch.tensor(mean).view_as(self.pixel_mean))
        self.pixel_std.copy_(torch.tensor(std).view_as(self.pixel_std))

    def normalize(self, x: Tensor) -> Tensor:
        """pixels (B, C, H, W) in [0, 1] -> (x - mean) / std per channel."""
        return (x - self.pixel_mean) / self.pixel_std


class CNN(ImageModel):
    """Stages of ``n_layer`` x (conv 3x3 -> [BatchNorm] -> ReLU), each ending in a 2x2 max-pool; then
    flatten -> Linear(n_embd) -> ReLU -> dropout -> Linear(num_classes).

    >>> m = CNN(ModelConfig(name="cnn", image_size=8, in_channels=1, num_classes=10, channels="4,8", n_embd=16))
    >>> m(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.stage_widths
        check_input(cfg, 2 ** len(widths))
        self._init_stats(cfg.in_channels)
        layers: list[nn.Module] = []
        c, each = cfg.in_channels, iter(cfg.conv_widths())
        for _ in widths:
            for _ in range(cfg.n_layer):
                w = next(each)
                layers.append(nn.Conv2d(c, w, 3, padding=1, bias=not cfg.batch_norm))
                if cfg.batch_norm:
                    layers.append(nn.BatchNorm2d(w))
                layers.append(nn.ReLU(inplace=True))
                c = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, cfg.n_embd), nn.ReLU(inplace=True),
                                  Dropout(cfg.dropout), nn.Linear(cfg.n_embd, cfg.num_classes))
        self.channels_last = cfg.channels_last

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> logits (B, K)."""
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut (1x1 conv + BN when the shape changes), ReLU.
    ``inner``: the first convolution's width (``c_out`` unless channel pruning narrowed it)."""

    def __init__(self, c_in: int, c_out: int, stride: int, inner: int = 0) -> None:
        super().__init__()
        inner = inner or c_out
        self.conv1 = nn.Conv2d(c_in, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(ImageModel):
    """Stem conv3x3 -> BN -> ReLU, then stages of ``n_layer`` basic blocks (the first of each later stage
    halves the resolution), global average pool, dropout, Linear(num_classes).

    >>> m = ResNet(ModelConfig(name="resnet", image_size=8, in_channels=1, num_classes=10, channels="4,8", n_layer=1))
    >>> m(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.stage_widths
        check_input(cfg, 2 ** (len(widths) - 1))
        self._init_stats(cfg.in_channels)
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        blocks, c, inner = [], widths[0], iter(cfg.conv_widths())
        for s, w in enumerate(widths):
            for b in range(cfg.n_layer):
                blocks.append(BasicBlock(c, w, 2 if s > 0 and b == 0 else 1, next(inner)))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dropout(cfg.dropout), nn.Linear(c, cfg.num_classes))
        self.channels_last = cfg.channels_last
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init each block's last BN: every block starts as the identity (Goyal et al.)
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> logits (B, K)."""
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.blocks(self.stem(x)))
