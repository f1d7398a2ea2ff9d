"""Image batches for training: the epoch's permutation, batched augmentation, float pixels.

Everything a training batch holds is a pure function of (seed, step, rank share): the images come from a
permutation seeded by (seed, epoch) and every random draw of the augmentation from a ``torch.Generator``
seeded by (seed, step, share), so a resumed run sees the very batches it would have seen, and the global
generator is never touched.

The transforms follow torchvision's definitions (``transforms.v2``: RandomCrop with padding,
RandomResizedCrop, RandomAffine, RandomHorizontalFlip, RandAugment, TrivialAugmentWide, RandomErasing, MixUp,
CutMix) but run on the whole batch at once, each image with its own draws: geometric ones as one
``affine_grid`` / ``grid_sample`` (bilinear, zeros outside), colour ones as tensor arithmetic. They are
lmforge's own because PyPI's torchvision for torch 2.13 is a CUDA build whose import fails beside the CPU
torch (and takes ``transformers`` down with it; docs/design.md). Order per image: crop (``crop_padding``
or ``crop_scale``), affine (``rotate``, ``translate``, ``scale``, ``shear``), ``hflip``, ``auto``, then
``erasing``; per batch ``mixup`` / ``cutmix`` (one of the two, drawn, when both are on), which make the
targets soft (B, K) probabilities.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from lmforge.data.images import ImageSet


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale."""
    x = images.float().div_(255.0).transpose(0, 1).flatten(1)  # (C, N*H*W)
    std = x.std(dim=1).clamp_min(1e-3)
    return [round(float(v), 6) for v in x.mean(dim=1)], [round(float(v), 6) for v in std]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 pixels in [0, 1] (the models normalise them themselves)."""
    return images.float().div_(255.0)


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def warp(x: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor,
         shear_x: torch.Tensor, shear_y: torch.Tensor) -> torch.Tensor:
    """Per-image affine maps about the centre (degrees, counter-clockwise on screen as torchvision's; shifts as a
    share of the size), bilinear, zeros outside. x (B, C, H, W); every other argument (B,)."""
    a, sx, sy = (torch.deg2rad(t) for t in (-angle, shear_x, shear_y))  # y points down: negate for counter-clockwise
    # output -> input coordinates, normalised to [-1, 1]: inverse of translate . rotate . shear . scale
    fwd = torch.zeros(len(x), 3, 3)
    rot = torch.stack([torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)], 1).view(-1, 2, 2)
    sh = torch.stack([torch.ones_like(sx), torch.tan(sx), torch.tan(sy), torch.ones_like(sy)], 1).view(-1, 2, 2)
    fwd[:, :2, :2] = rot @ sh * scale.view(-1, 1, 1)
    fwd[:, 0, 2], fwd[:, 1, 2], fwd[:, 2, 2] = 2 * tx, 2 * ty, 1.0
    theta = torch.linalg.inv(fwd)[:, :2]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def pad_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding=pad): zero-pad, then a crop of the original size at a random offset per image."""
    B, _, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (B,), generator=g), torch.randint(0, 2 * pad + 1, (B,), generator=g)
    rows = (dy.view(B, 1) + torch.arange(H)).view(B, 1, H, 1).expand(B, x.shape[1], H, W + 2 * pad)
    out = xp.gather(2, rows)
    cols = (dx.view(B, 1) + torch.arange(W)).view(B, 1, 1, W).expand(B, x.shape[1], H, W)
    return out.gather(3, cols)


def resized_crop(x: torch.Tensor, min_scale: float, g: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop: a box of area share in [min_scale, 1] and aspect ratio in [3/4, 4/3], resized back."""
    B = len(x)
    area = _u(g, B, min_scale, 1.0)
    ratio = torch.exp(_u(g, B, math.log(3 / 4), math.log(4 / 3)))
    w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    cx, cy = (torch.rand(B, generator=g) * (1 - w) + w / 2), (torch.rand(B, generator=g) * (1 - h) + h / 2)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = w, h, 2 * cx - 1, 2 * cy - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (b + (a - b) * f.view(-1, 1, 1, 1)).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel (on 256 levels), torchvision's up to ties."""
    B, C, H, W = x.shape
    q = (x * 255).round().long().flatten(2)  # (B, C, HW)
    hist = torch.zeros(B, C, 256).scatter_add_(2, q, torch.ones_like(q, dtype=torch.float))
    cdf = hist.cumsum(2)
    lut = ((cdf - cdf[..., :1]) / (cdf[..., -1:] - cdf[..., :1]).clamp_min(1) * 255).round()
    return lut.gather(2, q).view(B, C, H, W) / 255


# TrivialAugmentWide's ops and magnitude ranges (torchvision); RandAugment's at magnitude 9 of 31 bins
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
       "sharpness", "posterize", "solarize", "autocontrast", "equalize")
WIDE = {"shear_x": 0.99, "shear_y": 0.99, "translate_x": 32.0, "translate_y": 32.0, "rotate": 135.0, "brightness": 0.99,
        "color": 0.99, "contrast": 0.99, "sharpness": 0.99, "posterize": (8, 2), "solarize": 1.0}
RAND = {"shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331, "translate_y": 150 / 331, "rotate": 30.0,
        "brightness": 0.9, "color": 0.9, "contrast": 0.9, "sharpness": 0.9, "posterize": (8, 4), "solarize": 1.0}


def apply_op(x: torch.Tensor, op: str, mag: torch.Tensor, wide: bool) -> torch.Tensor:
    """One auto-augment op on images x (n, C, H, W) in [0, 1]; ``mag`` (n,) in [0, 1] of the op's range, each
    signed op with a random sign already folded in (negative ``mag``)."""
    top = (WIDE if wide else RAND).get(op)
    n, zero = len(x), torch.zeros(len(x))
    one = torch.ones(n)
    if op == "identity":
        return x
    if op in ("shear_x", "shear_y"):  # torchvision shears by atan(magnitude) degrees
        deg = torch.rad2deg(torch.atan(mag * top))
        return warp(x, zero, zero, zero, one, deg if op == "shear_x" else zero, deg if op == "shear_y" else zero)
    if op in ("translate_x", "translate_y"):
        share = mag * top / x.shape[-1] if wide else mag * top  # Wide: pixels (of 32); RandAugment: a share
        return warp(x, zero, share if op == "translate_x" else zero, share if op == "translate_y" else zero, one, zero, zero)
    if op == "rotate":
        return warp(x, mag * top, zero, zero, one, zero, zero)
    if op == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + mag * top)
    if op == "color":
        return _blend(x, _gray(x).expand_as(x), 1 + mag * top)
    if op == "contrast":
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x, mean.expand_as(x), 1 + mag * top)
    if op == "sharpness":
        k = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
        blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(x.shape[1], 1, 3, 3), groups=x.shape[1])
        return _blend(x, blur, 1 + mag * top)
    if op == "posterize":
        bits = (top[0] - mag.abs() * (top[0] - top[1])).round().clamp(1, 8).view(-1, 1, 1, 1)
        shift = 2 ** (8 - bits)
        return torch.div((x * 255).round(), shift, rounding_mode="floor") * shift / 255
    if op == "solarize":
        thr = (1 - mag.abs() * top).view(-1, 1, 1, 1)
        return torch.where(x >= thr, 1 - x, x)
    if op == "autocontrast":
        lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)
    return _equalize(x)


def auto_augment(x: torch.Tensor, policy: str, g: torch.Generator) -> torch.Tensor:
    """TrivialAugmentWide (one op a image, uniform magnitude) or RandAugment (two ops, magnitude 9 of 31)."""
    rounds, wide = (1, True) if policy == "trivialaugment" else (2, False)
    for _ in range(rounds):
        ops = torch.randint(len(OPS), (len(x),), generator=g)
        mag = torch.rand(len(x), generator=g) if wide else torch.full((len(x),), 9 / 30)
        sign = torch.where(torch.rand(len(x), generator=g) < 0.5, -1.0, 1.0)
        out = x.clone()
        for k, op in enumerate(OPS):
            idx = (ops == k).nonzero().flatten()
            if len(idx):
                out[idx] = apply_op(x[idx], op, (mag * sign)[idx], wide)
        x = out
    return x


def erase(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """RandomErasing: with probability p an image gets a box (2-33% of its area, aspect ratio 0.3-3.3) of
    uniform random values."""
    B, C, H, W = x.shape
    hit = torch.rand(B, generator=g) < p
    area = _u(g, B, 0.02, 0.33) * H * W
    ratio = torch.exp(_u(g, B, math.log(0.3), math.log(3.3)))
    h = torch.sqrt(area * ratio).round().clamp(1, H).long()
    w = torch.sqrt(area / ratio).round().clamp(1, W).long()
    top = (torch.rand(B, generator=g) * (H - h + 1)).floor().long()
    left = (torch.rand(B, generator=g) * (W - w + 1)).floor().long()
    ys, xs = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
    box = ((ys >= top.view(B, 1, 1)) & (ys < (top + h).view(B, 1, 1)) & (xs >= left.view(B, 1, 1))
           & (xs < (left + w).view(B, 1, 1)) & hit.view(B, 1, 1)).unsqueeze(1)
    return torch.where(box, torch.rand(x.shape, generator=g), x)


def mix(x: torch.Tensor, y: torch.Tensor, k: int, cfg, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix with the batch rolled by one (torchvision's pairing): soft targets (B, k)."""
    kinds = [n for n, a in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if a]
    kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
    alpha = cfg.mixup if kind == "mixup" else cfg.cutmix
    lam = _beta(alpha, g)
    target = F.one_hot(y, k).float()
    if kind == "mixup":
        x = x * lam + x.roll(1, 0) * (1 - lam)
    else:
        H, W = x.shape[-2:]
        r = math.sqrt(1 - lam)
        cy, cx = int(torch.randint(H, (1,), generator=g)), int(torch.randint(W, (1,), generator=g))
        y0, y1 = max(cy - int(r * H / 2), 0), min(cy + int(r * H / 2), H)
        x0, x1 = max(cx - int(r * W / 2), 0), min(cx + int(r * W / 2), W)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.roll(1, 0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    return x, target * lam + target.roll(1, 0) * (1 - lam)


def _beta(alpha: float, g: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw from ``g`` by Joehnk's method (two uniforms, accepted when x + y <= 1)."""
    for _ in range(10_000):
        u = torch.rand(2, generator=g, dtype=torch.float64).clamp_min(1e-300)
        x, y = float(u[0]) ** (1 / alpha), float(u[1]) ** (1 / alpha)
        if 0 < x + y <= 1:
            return x / (x + y)
    return 0.5


class ImageBatches:
    """Training batches as a pure function of (seed, step); fixed validation batches. Images are float in [0, 1]."""

    tokens_per_sample = 1  # fit()'s throughput figure counts images

    def __init__(self, train: ImageSet, val: ImageSet, cfg, global_batch: int, seed: int):
        self.train, self.val, self.cfg = train, val, cfg
        self.global_batch, self.seed, self.eval_batch = global_batch, seed, cfg.eval_batch
        self.num_classes = len(train.label_names)

    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))

    def picks(self, step: int) -> torch.Tensor:
        """Indices of the train images of ``step``'s global batch (epochs follow each other without a gap)."""
        n = len(self.train)
        pos = torch.arange(step * self.global_batch, (step + 1) * self.global_batch)
        out = torch.empty_like(pos)
        for epoch in torch.unique(pos // n).tolist():
            here = pos // n == epoch
            out[here] = self._perm(epoch)[pos[here] % n]
        return out

    def train_batch(self, step: int, index: int, size: int):
        picks = self.picks(step)[index * size : (index + 1) * size]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 1009 + index)
        return self.augment(self.train.images[picks], self.train.labels[picks], g)

    def augment(self, images: torch.Tensor, labels: torch.Tensor, g: torch.Generator):
        """uint8 images (B, C, H, W), labels (B,) -> (float images in [0, 1], labels or soft targets (B, K))."""
        cfg, x, B = self.cfg, to_float(images), len(images)
        if cfg.crop_padding:
            x = pad_crop(x, cfg.crop_padding, g)
        if cfg.crop_scale:
            x = resized_crop(x, cfg.crop_scale, g)
        if cfg.rotate or cfg.translate or cfg.scale or cfg.shear:
            zero = torch.zeros(B)
            x = warp(x, _u(g, B, -cfg.rotate, cfg.rotate), _u(g, B, -cfg.translate, cfg.translate),
                     _u(g, B, -cfg.translate, cfg.translate), _u(g, B, 1 - cfg.scale, 1 + cfg.scale),
                     _u(g, B, -cfg.shear, cfg.shear) if cfg.shear else zero, zero)
        if cfg.hflip:
            x = torch.where((torch.rand(B, generator=g) < 0.5).view(B, 1, 1, 1), x.flip(-1), x)
        if cfg.auto != "none":
            x = auto_augment(x, cfg.auto, g)
        if cfg.erasing:
            x = erase(x, cfg.erasing, g)
        if cfg.mixup or cfg.cutmix:
            return mix(x, labels, self.num_classes, cfg, g)
        return x, labels

    def eval_batches(self):
        for i in range(0, len(self.val), self.eval_batch):
            yield to_float(self.val.images[i : i + self.eval_batch]), self.val.labels[i : i + self.eval_batch]
