"""``/v1/classify`` on an image run: each ``input`` is a base64 image file (PNG, JPEG, BMP ...).

Checked in order, each failure a JSON error naming ``input[i]``: valid base64 (422), at most
``max_image_bytes`` decoded bytes (413), an image Pillow reads (422) of at most ``max_image_pixels``
pixels (413, checked from the header before the pixels are decoded), and the run's size after its
``image.resize`` (422). The pixels are converted to the run's channels and classified in batches shared
across concurrent requests (:class:`ImageBatcher`).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
import torch

from lmforge.tools.serve.batching import Batcher
from lmforge.tools.serve.limits import APIError


def decode_images(texts: list[str], cfg, limits) -> list[torch.Tensor]:
    """base64 strings -> uint8 (C, H, W) tensors of the run's shape."""
    from PIL import Image, UnidentifiedImageError

    m, im = cfg.model, cfg.image
    out = []
    for i, text in enumerate(texts):
        where = f"input[{i}]" if len(texts) > 1 else "input"
        if 4 * (limits.max_image_bytes // 3 + 2) < len(text):  # before decoding: base64 is 4/3 of the bytes
            raise APIError(413, f"{where}: the image is over this server's limit of {limits.max_image_bytes:,} bytes",
                           "image_too_large", "input")
        try:
            blob = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(422, f"{where}: not a base64 string (expected a base64-encoded image file)", "invalid_value",
                           "input") from None
        if len(blob) > limits.max_image_bytes:
            raise APIError(413, f"{where}: {len(blob):,} bytes, this server's limit is {limits.max_image_bytes:,}",
                           "image_too_large", "input")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(blob)) as img:
                    w, h = img.size
                    if w * h > limits.max_image_pixels:
                        raise APIError(413, f"{where}: {w}x{h} pixels, this server's limit is {limits.max_image_pixels:,}",
                                       "image_too_large", "input")
                    img.load()
                    img = img.convert("L" if m.in_channels == 1 else "RGB")
                    if im.resize and img.size != (im.resize, im.resize):
                        img = img.resize((im.resize, im.resize), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], -1)
        except APIError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise APIError(422, f"{where}: not a readable image file", "invalid_value", "input") from None
        if arr.shape[:2] != (m.image_size, m.image_size):
            raise APIError(422, f"{where}: {arr.shape[1]}x{arr.shape[0]} pixels, the model takes {m.image_size}x"
                                f"{m.image_size}", "invalid_value", "input")
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return out


class ImageBatcher(Batcher):
    """``await batcher.submit(images)`` -> their probabilities (len(images), num_labels)."""

    def __init__(self, model: torch.nn.Module, pool, window_s: float = 0.005, max_batch: int = 32, batching: bool = True,
                 parallel: int = 1):
        self.model = model
        super().__init__(self._classify, pool, window_s, max_batch, batching, parallel)

    @torch.no_grad()
    def _classify(self, rows: list[torch.Tensor]) -> torch.Tensor:
        out = [self.model(torch.stack(rows[i : i + self.max_batch]).float().div_(255.0)).float().softmax(-1)
               for i in range(0, len(rows), self.max_batch)]
        return torch.cat(out)
