"""Pictures of an image run's evaluation: the confusion matrix and the worst-classified images.

matplotlib is imported lazily with the Agg backend (no display needed): ``pip install 'lmforge[plot]'``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import UserError
from lmforge.fileio import atomic_write_bytes


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("evaluate --plot needs matplotlib: pip install 'lmforge[plot]'") from None
    return plt


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_evaluation(out_dir: Path, tag: str, confusion: list[list[int]], names: list[str], images: torch.Tensor,
                    targets: torch.Tensor, probs: torch.Tensor, worst: int = 16) -> list[str]:
    """``confusion-<tag>.png`` (counts, rows true, columns predicted) and ``worst-<tag>.png`` (the ``worst``
    images with the lowest probability on their true class, titled true / predicted (probability)) in ``out_dir``."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    acc = sum(confusion[i][i] for i in range(k)) / max(1, sum(map(sum, confusion)))
    ax.set_title(f"confusion ({tag}): accuracy {acc:.2%}")
    paths = [out_dir / f"confusion-{tag}.png"]
    _save(fig, paths[0])
    plt.close(fig)
    true_p = probs.gather(1, targets.view(-1, 1)).flatten()
    order = torch.argsort(true_p)[:worst].tolist()
    cols = min(8, max(1, len(order)))
    rows = max(1, -(-len(order) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for a in axes.flat:
        a.axis("off")
    for a, i in zip(axes.flat, order):
        img = images[i].permute(1, 2, 0).numpy()
        a.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=255)
        p = int(probs[i].argmax())
        a.set_title(f"{names[int(targets[i])]} -> {names[p]} ({float(probs[i, p]):.2f})", fontsize=8,
                    color="black" if p == int(targets[i]) else "crimson")
    fig.suptitle(f"worst-classified ({tag}): true -> predicted (probability)", fontsize=9)
    paths.append(out_dir / f"worst-{tag}.png")
    _save(fig, paths[1])
    plt.close(fig)
    return [str(p) for p in paths]
