"""``image:``: the data, augmentation and loss settings of an image-classification run (task ``image``)."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config.fields import F, check_choice, check_float, check_int, show
from lmforge.errors import UserError


@dataclass
class ImageConfig:
    data: str = F("", "images: a registered set (digits, mnist), a folder in the ImageFolder layout (DIR/<label>/*.png) "
                      "or an .npz file with 'images' (N, H, W[, C]) and 'labels' (N,)")
    labels: str = F("", "class names, comma-separated; empty = the data's (sorted folder names, or 0..K-1)")
    val_fraction: float = F(0.1, "a folder or .npz of your own: stratified share held out for validation")
    test_fraction: float = F(0.0, "a folder or .npz of your own: stratified share held out as the test split")
    resize: int = F(0, "resize every image to this many pixels square; 0 = keep the sizes (images of another "
                       "size than the first are refused)")
    color: str = F("auto", "auto (the data's channels; mixed counts are refused) | gray | rgb (converted)")
    crop_padding: int = F(0, "augmentation: random crop of the image's size after padding it by this many pixels")
    crop_scale: float = F(0.0, "augmentation: random resized crop of this share of the area or more (0 = off)")
    rotate: float = F(0.0, "augmentation: random rotation within +- this many degrees")
    translate: float = F(0.0, "augmentation: random shift within +- this share of the width and height")
    scale: float = F(0.0, "augmentation: random zoom within 1 +- this")
    shear: float = F(0.0, "augmentation: random shear within +- this many degrees")
    hflip: bool = F(False, "augmentation: random horizontal flips (off for digits: a flipped 2 is no 2)")
    auto: str = F("none", "augmentation policy: none | randaugment | trivialaugment (torchvision's)")
    erasing: float = F(0.0, "augmentation: probability of random erasing of a patch, after normalisation")
    mixup: float = F(0.0, "mixup alpha (0 = off); with cutmix, each batch takes one of the two")
    cutmix: float = F(0.0, "cutmix alpha (0 = off)")
    label_smoothing: float = F(0.0, "label-smoothed cross-entropy epsilon")
    eval_batch: int = F(256, "images per evaluation / prediction batch")

    def __post_init__(self) -> None:
        check_choice("image", "color", self.color, ("auto", "gray", "rgb"))
        check_choice("image", "auto", self.auto, ("none", "randaugment", "trivialaugment"))
        for k in ("val_fraction", "test_fraction"):
            check_float(f"image.{k}", getattr(self, k), 0.0, 1.0, lo_open=False, hi_open=True, what="a fraction")
        for k in ("resize", "crop_padding"):
            check_int(f"image.{k}", getattr(self, k), 0)
        check_int("image.eval_batch", self.eval_batch, 1)
        check_float("image.crop_scale", self.crop_scale, 0.0, 1.0, lo_open=False, what="a share of the area")
        for k in ("rotate", "shear"):
            check_float(f"image.{k}", getattr(self, k), 0.0, 180.0, lo_open=False, what="degrees")
        check_float("image.translate", self.translate, 0.0, 1.0, lo_open=False, what="a share of the size")
        check_float("image.scale", self.scale, 0.0, 1.0, lo_open=False, hi_open=True, what="a share")
        check_float("image.erasing", self.erasing, 0.0, 1.0, lo_open=False, what="a probability")
        for k in ("mixup", "cutmix"):
            check_float(f"image.{k}", getattr(self, k), 0.0, None, lo_open=False)
        check_float("image.label_smoothing", self.label_smoothing, 0.0, 1.0, lo_open=False, hi_open=True,
                    what="a probability")
        if self.labels and len(self.label_names) < 2:
            raise UserError(f"image.labels: expected at least two class names separated by commas, got {show(self.labels)}")

    @property
    def label_names(self) -> list[str]:
        return [s.strip() for s in self.labels.split(",") if s.strip()]

    @property
    def augments(self) -> bool:
        """Whether any augmentation is on (the train batches then differ from the plain images)."""
        return bool(self.crop_padding or self.crop_scale or self.rotate or self.translate or self.scale or self.shear
                    or self.hflip or self.auto != "none" or self.erasing or self.mixup or self.cutmix)
