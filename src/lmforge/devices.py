"""Devices and batches on them: foundation helpers that the training loop, the tasks' evaluators and the
tools share (no training in here).

- :func:`resolve_device`: ``auto`` -> cuda, mps or cpu; a device that is not there is a UserError;
- :func:`to_device`: a batch's inputs (a tensor, or a tuple / dict of them) on a device;
- :func:`call`: ``model(x)``, ``model(*x)`` or ``model(**x)`` for those inputs;
- :func:`autocast_context`: bf16 / fp16 autocast, or nothing for float32.
"""

from __future__ import annotations

import contextlib

import torch

from lmforge.errors import UserError


def to_device(x, device: torch.device):
    """A batch's inputs on ``device``: a tensor, or a tuple / dict of tensors (e.g. ids + padding mask)."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return type(x)(to_device(v, device) for v in x)


def call(model: torch.nn.Module, x):
    """``model(x)``, ``model(*x)`` for a tuple or ``model(**x)`` for a dict of inputs."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device: {name!r} asked for, but this machine has no CUDA device (use auto or cpu)")
    return dev


def autocast_context(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


_ALLOCATOR_TUNED = False
MMAP_THRESHOLD = 256 * 2**20  # bytes: blocks below this come from (and return to) malloc's heap, reused
TRIM_THRESHOLD = 2**30  # bytes: free memory kept at the heap's top before it is given back to the system


def tune_host_allocator() -> bool:
    """Keep glibc's malloc from unmapping and re-faulting activation-sized blocks on every step (once per
    process; True if it applied). By default glibc serves blocks over a threshold that adapts to what was
    freed (128 KiB .. 32 MiB) with fresh ``mmap`` pages and trims the heap's top: training steps that allocate
    and free the same tensors then pay page faults each time, by how much depending on what the process
    allocated before. Fixing both thresholds (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` would from the environment) measured 1,510 against 1,300-1,400 images/s for
    the MNIST CNN on 2 threads (docs/results.md); it costs up to ``TRIM_THRESHOLD`` of freed memory held.
    A no-op off glibc (macOS, Windows, musl) or when ``LMFORGE_MALLOC=default``."""
    global _ALLOCATOR_TUNED
    import os
    import sys

    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux") or os.environ.get("LMFORGE_MALLOC") == "default":
        return _ALLOCATOR_TUNED
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
        _ALLOCATOR_TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
    return _ALLOCATOR_TUNED
