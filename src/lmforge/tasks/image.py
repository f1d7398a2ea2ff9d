"""Task ``image``: image classification with a CNN, a ResNet or a ViT (``model.name: cnn | resnet | vit``).

- Data: :mod:`lmforge.data.images` (``image.data``: digits, mnist, an ImageFolder folder or an .npz file).
  A registered set brings its own train / val / test splits; a folder or file is split by class and by the
  sha1 of each image (``image.val_fraction``, ``image.test_fraction``): the same split every time it is read.
- Batches: :class:`lmforge.data.augment.ImageBatches` (augmentation seeded by (seed, step)).
- Loss: cross-entropy (``image.label_smoothing``); mixup / cutmix targets are probabilities.
- Metrics: accuracy, macro precision / recall / F1, per class, and the confusion matrix (scikit-learn).
- Predictions: image files -> (label, probability, path). An image run has no tokenizer (``tok`` is None).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge import tasks
from lmforge.errors import UserError
from lmforge.tasks.classify import metrics


def image_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of logits (B, K) against class indices (B,) or probabilities (B, K)."""
    return F.cross_entropy(logits.float(), target, label_smoothing=eps)


def read_split(cfg, split: str, data: str | None = None, source: str = "image.data"):
    """``split`` of the run's data (or of ``data``: a folder / .npz read whole), conformed to the run's classes."""
    from lmforge.data.images import REGISTERED, load_images
    from lmforge.data.images import split as split_set

    im = cfg.image
    spec = data or im.data
    names = im.label_names or None
    if data or spec in REGISTERED:
        return load_images(spec, split if spec in REGISTERED else "train", resize=im.resize, color=im.color,
                           label_names=names)
    whole = load_images(spec, resize=im.resize, color=im.color, label_names=names)
    fractions = (1.0 - im.val_fraction - im.test_fraction, im.val_fraction, im.test_fraction)
    if fractions[0] <= 0:
        raise UserError(f"{source}: image.val_fraction + image.test_fraction leave no training images")
    parts = dict(zip(("train", "val", "test"), split_set(whole, fractions)))
    if not len(parts[split]):
        raise UserError(f"{spec}: the {split} split is empty (raise image.{split}_fraction or give more images)")
    return parts[split]


def check_shape(cfg, images: torch.Tensor, where: str) -> None:
    """Images (N, C, H, W) have the run's channels and size, else a one-line error naming ``where``."""
    m = cfg.model
    want = (m.in_channels, m.image_size, m.image_size)
    if tuple(images.shape[1:]) != want:
        c, h, w = images.shape[1:]
        raise UserError(f"{where}: images are {c} channel(s) of {w}x{h} pixels, the run takes {want[0]} of "
                        f"{want[2]}x{want[1]} (set image.resize in its config to resize them)")


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256, device="cpu") -> torch.Tensor:
    """Class probabilities (N, K) of uint8 images (N, C, H, W)."""
    from lmforge.data.augment import to_float

    out = [model(to_float(images[i : i + batch_size]).to(device)).float().softmax(-1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def load_files(cfg, paths: list[str]) -> torch.Tensor:
    """Image files -> uint8 (N, C, H, W) in the run's channels (and size, with ``image.resize``)."""
    import numpy as np

    from lmforge.data.images import decode_image, resize_image

    im, m = cfg.image, cfg.model
    color = {1: "gray", 3: "rgb"}[m.in_channels]
    arrs = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UserError(f"{p}: no such image file")
        a = decode_image(path, color)
        if im.resize:
            a = resize_image(a, im.resize)
        if a.shape[:2] != (m.image_size, m.image_size):
            raise UserError(f"{p}: {a.shape[1]}x{a.shape[0]} pixels, the run takes {m.image_size}x{m.image_size} "
                            f"(set image.resize in its config to resize them)")
        arrs.append(a)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous() if arrs else torch.zeros(0, m.in_channels, 1, 1)


class ImageClassification(tasks.Task):
    name = "image"
    val_accuracy = True
    tokenizer = False

    def build(self, cfg, tok):
        from lmforge.models import build

        return build(cfg.model)

    def rebuild(self, cfg, tok, tensors, meta, source, device, base=None):
        """The float model, or for ``lmforge compress --method int8`` of a CNN / ResNet the statically quantized one."""
        from lmforge.models.quantize_conv import FORMAT, load_static

        if cfg.compress.quantize != "int8" or meta.get("lmforge") != FORMAT:
            return super().rebuild(cfg, tok, tensors, meta, source, device, base)
        if torch.device(device).type != "cpu":
            raise UserError(f"{source}: int8 convolutions run on the CPU only (PyTorch's quantized kernels); use --device cpu")
        m = cfg.model
        return load_static(self.build(cfg, tok), tensors, source, torch.zeros(1, m.in_channels, m.image_size, m.image_size))

    def batches(self, cfg, tok, data):
        """``data``: (train, val) :class:`~lmforge.data.images.ImageSet` s."""
        from lmforge.data.augment import ImageBatches

        train, val = data
        return ImageBatches(train, val, cfg.image, cfg.train.batch_size, cfg.train.seed)

    def run_batches(self, cfg, run_dir, tok):
        return self.batches(cfg, tok, (read_split(cfg, "train"), read_split(cfg, "val")))

    def loss(self, output, target):
        return image_loss(output, target)

    def loss_for(self, cfg):
        eps = cfg.image.label_smoothing
        return self.loss if not eps else (lambda output, target: image_loss(output, target, eps))

    def evaluate(self, cfg, model, tok, run_dir, data, split, device="cpu", plot=None, **_options) -> dict:
        """Metrics on ``split`` of the run's data or on ``data``; ``plot`` (a folder): also the confusion matrix
        and the worst-classified images as PNG files there (their paths under ``"plots"``)."""
        d = read_split(cfg, split, data)
        check_shape(cfg, d.images, d.source)
        probs = predict_proba(model, d.images, cfg.image.eval_batch, device)
        out = {"run_dir": str(run_dir), "data": d.source if data else f"{cfg.image.data} ({split})",
               **metrics(d.labels.tolist(), probs.argmax(-1).tolist(), cfg.image.label_names)}
        if plot is not None:
            from lmforge.tasks.image_plots import plot_evaluation

            tag = Path(data).stem if data else split
            out["plots"] = plot_evaluation(Path(plot), tag, out["confusion"], cfg.image.label_names, d.images, d.labels, probs)
        return out

    def predict(self, cfg, model, tok, texts, device="cpu"):
        """``texts``: image file paths."""
        probs = predict_proba(model, load_files(cfg, texts), cfg.image.eval_batch, device)
        names = cfg.image.label_names
        best = probs.max(-1) if len(probs) else None
        return [] if best is None else [(names[i], float(p), t) for i, p, t in
                                        zip(best.indices.tolist(), best.values.tolist(), texts)]


tasks.register(ImageClassification())
