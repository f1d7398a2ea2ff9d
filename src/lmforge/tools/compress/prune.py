"""Pruning: global magnitude (unstructured), attention heads or MLP neurons (structured), and recovery.

Unstructured: the pruned set is every ``nn.Linear`` weight (and an ``nn.LSTM``'s gate matrices)
except the output heads (``head``, ``lm_head``, ``mlm_head.decoder``) and weights tied to an
embedding; embeddings, norms and biases stay dense. Exactly ``round(sparsity * N)`` of its N weights,
those of smallest |w| over all layers together (a global threshold), are set to zero. The zeros are
in the saved weights (dense tensors: the file does not shrink, and dense kernels do not run faster).

Structured: whole heads (their q, k, v rows of ``c_attn`` and columns of ``c_proj``) or MLP neurons
(a row of ``c_fc``, a column of ``c_proj``) are cut out, so the matrices really shrink; the model
config then records the heads / MLP width of each block (``model.layer_n_head`` / ``layer_n_inner``).
A head's score is ||its c_attn rows|| * ||its c_proj columns||, a neuron's ||c_fc row|| * ||c_proj
column||; the lowest ``round(sparsity * count)`` over all blocks go, keeping at least one per block.

Recovery (``steps > 0``): a short :func:`lmforge.training.loop.fit` on the data and loss the run was trained
with (a classifier: its labelled data, ``ClassifyBatches``, cross-entropy; an LM: its token shards,
``LMBatches`` / ``MLMBatches``, next-token / masked-token loss). Unstructured masks are re-applied
after every optimizer step (``fit(after_step=...)``), so the sparsity stays exact.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import UserError

OUTPUT_HEADS = ("head", "lm_head", "mlm_head.decoder")


# ----------------------------------------------------------------------------- unstructured
def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """{parameter name: weight} of the pruned set (see the module docstring)."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out = {}
    for name, m in model.named_modules():
        if any(name == h or name.endswith("." + h) for h in OUTPUT_HEADS):
            continue
        if isinstance(m, nn.Linear) and id(m.weight) not in tied:
            out[f"{name}.weight"] = m.weight
        elif isinstance(m, nn.LSTM):
            out.update((f"{name}.{p}", w) for p, w in m.named_parameters() if p.startswith("weight_"))
    return out


def magnitude_masks(weights: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Keep-masks (bool, each weight's shape) dropping exactly ``round(sparsity * N)`` of all N weights:
    the smallest in |w| over all tensors together (ties broken by ``torch.topk``).

    >>> m = magnitude_masks({"a": torch.tensor([[1.0, -4.0]]), "b": torch.tensor([[0.5, 3.0, -2.0]])}, 0.4)
    >>> m["a"].tolist(), m["b"].tolist()
    ([[False, True]], [[False, True, True]])
    """
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])  # (N,)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    k = round(sparsity * flat.numel())
    if k:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.numel()].view(w.shape)
        start += w.numel()
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero the masked-out weights in place (parameters named as in ``model.named_parameters()``)."""
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        params[name].mul_(keep.to(params[name].dtype))


def sparsity_of(weights: dict[str, Tensor]) -> tuple[int, int]:
    """(zeros, total) over the given weights."""
    return (sum(int((w == 0).sum()) for w in weights.values()), sum(w.numel() for w in weights.values()))


# ----------------------------------------------------------------------------- structured
def _attention_layers(model: nn.Module) -> list[nn.Module]:
    from lmforge.models.layers import MultiHeadAttention

    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


def _mlp_layers(model: nn.Module) -> list[nn.Module]:
    from lmforge.models.layers import MLP

    return [m for m in model.modules() if isinstance(m, MLP)]


def _head_scores(attn: nn.Module) -> Tensor:
    """(H,) ||q, k, v rows of head h in c_attn|| * ||columns of head h in c_proj||."""
    H, hs = attn.n_head, attn.head_size
    qkv = attn.c_attn.weight.detach().view(3, H, hs, -1)  # (3, H, hs, C)
    proj = attn.c_proj.weight.detach().view(-1, H, hs)  # (C, H, hs)
    return torch.linalg.vector_norm(qkv, dim=(0, 2, 3)) * torch.linalg.vector_norm(proj, dim=(0, 2))


def _neuron_scores(mlp: nn.Module) -> Tensor:
    """(I,) ||c_fc row j|| * ||c_proj column j|| (swiglu: ||gate row j|| * ||up row j|| * ||c_proj column j||)."""
    fc = torch.linalg.vector_norm(mlp.c_fc.weight.detach(), dim=1)  # (I,), swiglu (2I,): gate rows | up rows
    if getattr(mlp, "activation", "gelu") == "swiglu":
        fc = fc.view(2, -1).prod(0)  # (I,)
    return fc * torch.linalg.vector_norm(mlp.c_proj.weight.detach(), dim=0)


def _select(scores: list[Tensor], n_remove: int) -> list[list[int]]:
    """Indices kept in each layer after dropping the ``n_remove`` lowest scores over all layers, one kept per layer at least.

    >>> _select([torch.tensor([3.0, 1.0]), torch.tensor([0.5, 0.2, 4.0])], 3)
    [[0], [2]]
    """
    order = sorted((float(s), layer, i) for layer, sc in enumerate(scores) for i, s in enumerate(sc))
    left, removed = [len(sc) for sc in scores], set()
    for _, layer, i in order:
        if len(removed) == n_remove:
            break
        if left[layer] > 1:
            removed.add((layer, i))
            left[layer] -= 1
    return [[i for i in range(len(sc)) if (layer, i) not in removed] for layer, sc in enumerate(scores)]


def _sub_linear(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new Linear holding the given output rows / input columns of ``lin`` (bias follows the rows)."""
    w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    if rows is not None:
        w, b = w[rows], (None if b is None else b[rows])
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _shrink_attention(attn: nn.Module, keep: list[int]) -> None:
    H, hs = attn.n_head, attn.head_size
    cols = (torch.tensor(keep)[:, None] * hs + torch.arange(hs)).flatten()  # (H' * hs,) within q (or k, v)
    attn.c_attn = _sub_linear(attn.c_attn, rows=torch.cat([part * H * hs + cols for part in range(3)]))  # q | k | v
    attn.c_proj = _sub_linear(attn.c_proj, cols=cols)
    attn.n_head = len(keep)


def _shrink_mlp(mlp: nn.Module, keep: list[int]) -> None:
    idx = torch.tensor(keep)
    rows = torch.cat([idx, idx + mlp.c_proj.in_features]) if getattr(mlp, "activation", "gelu") == "swiglu" else idx
    mlp.c_fc, mlp.c_proj = _sub_linear(mlp.c_fc, rows=rows), _sub_linear(mlp.c_proj, cols=idx)


def prune_structured(model: nn.Module, what: str, sparsity: float) -> tuple[list[int], int]:
    """Cut the lowest-scoring heads (``what="heads"``) or MLP neurons (``"neurons"``) out of ``model`` in place.

    Returns (heads or MLP width now in each block, the count there was before over all blocks).
    """
    layers = _attention_layers(model) if what == "heads" else _mlp_layers(model)
    if not layers:
        raise UserError(f"--structured {what}: this model has no attention heads or MLP neurons (an LSTM?); "
                        "use unstructured pruning (omit --structured)")
    scores = [_head_scores(m) if what == "heads" else _neuron_scores(m) for m in layers]
    total = sum(len(s) for s in scores)
    n_remove = min(round(sparsity * total), total - len(layers))
    if n_remove < 1:
        raise UserError(f"--sparsity {sparsity}: removes none of the {total} {what} (one per block stays); "
                        "give a larger sparsity")
    keep = _select(scores, n_remove)
    for m, k in zip(layers, keep):
        (_shrink_attention if what == "heads" else _shrink_mlp)(m, k)
    return [len(k) for k in keep], total


# ----------------------------------------------------------------------------- recovery
def cubic_sparsity(step: int, ramp: int, final: float) -> float:
    """Sparsity at ``step`` of a gradual prune reaching ``final`` at step ``ramp`` (Zhu & Gupta 2017):
    ``final * (1 - (1 - step / ramp) ** 3)``, fast at first while many small weights are left, then slower.

    >>> [round(cubic_sparsity(s, 4, 0.5), 4) for s in (0, 1, 2, 4, 9)]
    [0.0, 0.2891, 0.4375, 0.5, 0.5]
    """
    return final * (1.0 - (1.0 - min(step, ramp) / ramp) ** 3) if ramp > 0 else final


class GradualMasks:
    """``fit(after_step=...)`` hook pruning ``model`` gradually: every ``every`` steps up to ``ramp`` the
    magnitude masks are recomputed at :func:`cubic_sparsity`, after re-applying the current ones (so weights
    pruned before are zero and stay pruned); after every other step the current masks are re-applied.
    At ``ramp`` the sparsity is ``final`` exactly."""

    def __init__(self, model: nn.Module, final: float, ramp: int, every: int) -> None:
        self.model, self.final, self.ramp, self.every = model, final, ramp, max(1, every)
        self.masks: dict[str, Tensor] = {}

    def __call__(self, step: int) -> None:
        if self.masks:  # first: the step just taken moved pruned weights off zero
            apply_masks(self.model, self.masks)
        if step <= self.ramp and (step % self.every == 0 or step == self.ramp):
            self.masks = magnitude_masks(prunable(self.model), cubic_sparsity(step, self.ramp, self.final))
            apply_masks(self.model, self.masks)


def recover(model: nn.Module, cfg, src: Path, tok, steps: int, lr: float, run_dir: Path,
            masks: dict[str, Tensor] | GradualMasks | None = None, progress: bool = True,
            teacher: nn.Module | None = None, temperature: float = 2.0, alpha: float = 0.9) -> dict:
    """Fine-tune ``model`` in place for ``steps`` steps (LR ``lr``, warmup a tenth of the steps, then the run's
    schedule), re-applying ``masks`` after each step (or letting a :class:`GradualMasks` prune as it goes);
    ``run_dir`` gets fit()'s metrics.jsonl. Returns fit()'s summary.

    ``teacher`` (the model before pruning): the loss is :func:`lmforge.tools.compress.distill.distill_loss`, its
    soft targets at ``temperature`` weighted ``alpha`` against the hard labels. A classifier's teacher
    outputs are computed once per training example; an LM's for each batch.
    """
    import functools

    from lmforge import tasks
    from lmforge.runs import files as ckpt
    from lmforge.tools.compress.common import training_data
    from lmforge.training.loop import fit

    batches, loss_fn = training_data(cfg, src, tok)
    classify = tasks.of(cfg).val_accuracy  # a classifier: teacher outputs cached per example, accuracy logged
    train = dataclasses.replace(cfg.train, max_steps=steps, lr=lr, warmup_steps=min(cfg.train.warmup_steps, steps // 10),
                                eval_interval=0, save_interval=steps, log_interval=min(cfg.train.log_interval, steps),
                                device="cpu", compile=False, num_threads=0,
                                ema_decay=0.0)  # fit() would hand back the weights' average, masks not applied
    model.requires_grad_(True)
    net = model
    if teacher is not None:
        from lmforge.tools.compress.distill import Distiller, TeacherBatches, distill_loss

        teacher.eval().requires_grad_(False)
        batches = TeacherBatches(batches, teacher, False, torch.device("cpu"), cfg.train.dtype,
                                 cache=classify and tok is not None, progress=progress)  # images: per batch
        net, loss_fn = Distiller(model), functools.partial(distill_loss, temperature=temperature, alpha=alpha)
    hook = masks if isinstance(masks, GradualMasks) else (lambda step: apply_masks(model, masks)) if masks else None
    summary = fit(net, batches, train, run_dir, loss_fn=loss_fn, progress=progress, after_step=hook,
                  val_accuracy=classify, resumable=False)
    (run_dir / ckpt.TRAIN_STATE).unlink(missing_ok=True)  # resume state of the recovery: not part of the run
    model.eval()
    return summary
