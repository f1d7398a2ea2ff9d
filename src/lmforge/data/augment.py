"""Image batches for training: the epoch's permutation, ``torchvision.transforms.v2`` augmentation, normalisation.

Everything a training batch holds is a pure function of (seed, step, rank share): the images come from a
permutation seeded by (seed, epoch), and the augmentation draws from torch's generator seeded by
(seed, step, share) inside :func:`torch.random.fork_rng` (torchvision's transforms draw from it), so a
resumed run sees the very batches it would have seen, and nothing outside is disturbed.

Per image, in order: random crop after padding (``crop_padding``) or random resized crop (``crop_scale``);
random affine (``rotate``, ``translate``, ``scale``, ``shear``); horizontal flip (``hflip``); RandAugment or
TrivialAugment (``auto``); then float pixels in [0, 1] (the model normalises them with the train split's
channel mean / std, :func:`channel_stats`) and random erasing (``erasing``, with random values). Per batch: mixup or
cutmix (one of the two, drawn, when both are on), which make the targets soft (B, K) probabilities.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings

import torch

from lmforge.data.images import ImageSet
from lmforge.errors import UserError


@functools.cache
def transforms_v2():
    """``torchvision.transforms.v2``; also where torchvision's C++ operators cannot load.

    PyPI's torchvision wheels are CUDA builds: beside a CPU torch (``torch==2.13.0+cpu``) their ``_C``
    library does not load, and torchvision's import then fails while it registers fake / autograd kernels
    for its detection operators (``torchvision::nms does not exist``). The transforms are Python on top of
    torch and need none of those operators, so the two registration modules are skipped and the import is
    tried again (once, with a warning). A torchvision whose operators load is imported as it is."""
    try:
        from torchvision.transforms import v2
    except ImportError:
        raise UserError("image augmentation needs torchvision: pip install 'lmforge[vision]'") from None
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[name] = types.ModuleType(name)
        warnings.warn("torchvision's C++ operators do not load beside this torch (a CUDA torchvision wheel with a CPU "
                      "torch?); lmforge uses only its transforms, which do not need them", stacklevel=2)
        from torchvision.transforms import v2
    return v2


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale."""
    x = images.float().div_(255.0).transpose(0, 1).flatten(1)  # (C, N*H*W)
    std = x.std(dim=1).clamp_min(1e-3)
    return [round(float(v), 6) for v in x.mean(dim=1)], [round(float(v), 6) for v in std]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 pixels in [0, 1] (the models normalise them themselves)."""
    return images.float().div_(255.0)


def geometric(cfg, size: tuple[int, int]):
    """The per-image uint8 transforms of ``cfg`` (an ImageConfig) as one v2.Compose, or None when all are off."""
    v2 = transforms_v2()

    steps = []
    if cfg.crop_padding:
        steps.append(v2.RandomCrop(size, padding=cfg.crop_padding))
    if cfg.crop_scale:
        steps.append(v2.RandomResizedCrop(size, scale=(cfg.crop_scale, 1.0), antialias=True))
    if cfg.rotate or cfg.translate or cfg.scale or cfg.shear:
        steps.append(v2.RandomAffine(degrees=cfg.rotate, translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                                     scale=(1 - cfg.scale, 1 + cfg.scale) if cfg.scale else None,
                                     shear=cfg.shear or None))
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.auto == "randaugment":
        steps.append(v2.RandAugment())
    elif cfg.auto == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    return v2.Compose(steps) if steps else None


class ImageBatches:
    """Training batches as a pure function of (seed, step); fixed, normalised validation batches."""

    tokens_per_sample = 1  # fit()'s throughput figure counts images

    def __init__(self, train: ImageSet, val: ImageSet, cfg, global_batch: int, seed: int):
        self.train, self.val, self.cfg = train, val, cfg
        self.global_batch, self.seed, self.eval_batch = global_batch, seed, cfg.eval_batch
        self.num_classes = len(train.label_names)
        self.transform = geometric(cfg, tuple(train.shape[1:]))

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
        images, labels = self.train.images[picks], self.train.labels[picks]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + step) * 1009 + index)
            return self.augment(images, labels)

    def augment(self, images: torch.Tensor, labels: torch.Tensor):
        """uint8 images (B, C, H, W), labels (B,) -> (float images in [0, 1], labels or soft targets (B, K))."""
        v2 = transforms_v2()

        cfg = self.cfg
        if self.transform is not None:
            images = torch.stack([self.transform(img) for img in images])
        x = to_float(images)
        if cfg.erasing:
            erase = v2.RandomErasing(p=cfg.erasing, value="random")
            x = torch.stack([erase(img) for img in x])
        mixes = [m for m in (v2.MixUp(alpha=cfg.mixup, num_classes=self.num_classes) if cfg.mixup else None,
                             v2.CutMix(alpha=cfg.cutmix, num_classes=self.num_classes) if cfg.cutmix else None) if m]
        if mixes:
            mix = mixes[0] if len(mixes) == 1 else mixes[int(torch.randint(2, ()))]
            x, labels = mix(x, labels)
        return x, labels

    def eval_batches(self):
        for i in range(0, len(self.val), self.eval_batch):
            yield (to_float(self.val.images[i : i + self.eval_batch]),
                   self.val.labels[i : i + self.eval_batch])
