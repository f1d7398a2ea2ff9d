"""``lmforge explain`` for an image run: pixel attributions of the class probability, drawn over the image.

- ``ig``: Captum's ``IntegratedGradients`` on the pixels (in [0, 1]) from a black image, the steps doubled
  (50 to 400) until the convergence delta is within 0.01, as for text;
- ``occlusion``: Captum's ``Occlusion``: a black square of a seventh of the side (at least 2 pixels) slid
  with half its size as the stride; a pixel's score is the mean drop of the probability when it is covered;
- ``random``: seeded noise.

A pixel's score is summed over the channels. The page shows each image beside its attribution map (red:
for the class, blue: against, symmetric scale) as inline PNGs, which are also written beside the page
(``<page>-<i>.png``).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.tools.explain.attribution import DELTA_TOLERANCE, until_converged


class _Prob(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model(x).float().softmax(-1).gather(1, target.view(-1, 1).expand(len(x), 1)).squeeze(1)


def attribute(model: nn.Module, x: torch.Tensor, target: int, method: str, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Scores (H, W) for one image ``x`` (C, H, W) in [0, 1]."""
    try:
        from captum.attr import IntegratedGradients, Occlusion
    except ImportError:
        raise UserError("lmforge explain on image runs needs Captum: pip install 'lmforge[explain]'") from None
    f, xb, tgt = _Prob(model), x.unsqueeze(0), torch.tensor([target])
    extra: dict = {}
    if method == "ig":
        ig = IntegratedGradients(f)
        a, delta, steps = until_converged(
            lambda n: ig.attribute(xb, baselines=torch.zeros_like(xb), additional_forward_args=(tgt,), n_steps=n,
                                   method="gausslegendre", return_convergence_delta=True, internal_batch_size=64))
        with torch.no_grad():
            extra = {"delta": round(delta, 6), "steps": steps, "converged": delta <= DELTA_TOLERANCE,
                     "baseline_prob": round(float(f(torch.zeros_like(xb), tgt)), 6)}
    elif method == "occlusion":
        C, H, W = x.shape
        k = max(2, H // 7)
        a = Occlusion(f).attribute(xb, sliding_window_shapes=(C, k, k), strides=(C, max(1, k // 2), max(1, k // 2)),
                                   baselines=0.0, additional_forward_args=(tgt,), perturbations_per_eval=64)
        extra = {"window": k}
    else:
        a = torch.randn(xb.shape, generator=torch.Generator().manual_seed(seed))
    return a.detach().squeeze(0).sum(0), extra  # (H, W)


def _overlay_png(x: torch.Tensor, scores: torch.Tensor, title: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = x.permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2), dpi=100)
    axes[0].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=9)
    m = float(scores.abs().max()) or 1.0
    axes[1].imshow(img.mean(2), cmap="gray", vmin=0, vmax=1, alpha=0.5)
    axes[1].imshow(scores.numpy(), cmap="bwr", vmin=-m, vmax=m, alpha=0.7)
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def explain_images(src: Path, cfg, model, paths: list[str], method: str, target: int | None, out, json_out,
                   seed: int = 0) -> list[dict]:
    from lmforge.data.augment import to_float
    from lmforge.tasks.image import load_files

    names = cfg.image.label_names
    x = to_float(load_files(cfg, paths))
    rows, cards = [], []
    for i, (p, xi) in enumerate(zip(paths, x)):
        with torch.no_grad():
            probs = model(xi.unsqueeze(0)).float().softmax(-1).squeeze(0)
        c = int(probs.argmax()) if target is None else target
        scores, extra = attribute(model, xi, c, method, seed + i)
        row = {"file": p, "method": method, "target": names[c], "predicted": names[int(probs.argmax())],
               "probabilities": {n: round(float(v), 6) for n, v in zip(names, probs)},
               "scores": [[round(float(v), 6) for v in r] for r in scores], **extra}
        rows.append(row)
        if out:
            png = _overlay_png(xi, scores, f"{method}: {names[c]}")
            ckpt.atomic_write_bytes(Path(out).with_name(f"{Path(out).stem}-{i}.png"), png)
            uri = "data:image/png;base64," + base64.b64encode(png).decode()
            what = (f" &middot; {extra['steps']} steps, convergence delta {extra['delta']:.2e} "
                    f"({'within' if extra['converged'] else 'over'} tolerance)") if method == "ig" else ""
            cards.append(f'<div class="card"><p class="meta">{html.escape(p)}: predicted <b>{html.escape(row["predicted"])}'
                         f'</b> ({float(probs.max()):.4f}); explained class <b>{html.escape(names[c])}</b>; method '
                         f'<b>{method}</b>{what}</p><img alt="attribution map" src="{uri}"></div>')
    if out:
        from lmforge.tools.explain.page import STYLE

        ckpt.atomic_write_text(Path(out), f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lmforge explain: {html.escape(str(src))}</title><style>{STYLE}</style></head>
<body><h1>Why the model decided</h1><p class="meta">run <code>{html.escape(str(src))}</code>. Red pixels push the
explained class up, blue ones down.</p>{''.join(cards)}</body></html>
""")
    if json_out:
        import json

        ckpt.atomic_write_text(Path(json_out), json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return rows
