"""What ``lmforge compress`` does differently for an image run (task ``image``: CNN, ResNet, ViT).

- ``--method int8``: a CNN / ResNet is statically quantized, every convolution and Linear layer int8
  (:mod:`lmforge.models.quantize_conv`: BatchNorm folded, ReLU fused, activation ranges observed on
  ``CALIBRATION`` training images drawn with the run's seed); a ViT gets the text models' dynamic int8
  Linear layers (:mod:`lmforge.models.quantize`; its patch embedding convolution stays float32).
- ``--method prune --structured channels``: removes the least important output channels of every
  convolution of a CNN (the next convolution's or the first Linear layer's inputs with them), or the inner
  channels of every ResNet basic block (the first convolution's outputs, the second's inputs; the residual
  widths stay). A channel's importance is the L1 norm of its filter times its BatchNorm scale
  ``|gamma| / sqrt(var + eps)`` (what the channel contributes after normalisation); each layer keeps
  ``round((1 - sparsity) * width)`` channels, at least one. The shapes go to ``model.layer_channels``.
- the timings: one forward pass of batch 1 and ``BATCH`` random pixel images of the run's shape, and
  ``throughput_img_s_b64``; the metric: accuracy and macro F1 of the task's ``evaluate``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import UserError

CALIBRATION = 1024
BATCH = 64
STATS = "image.json"  # lmforge.recipes.image.STATS


def is_image(cfg) -> bool:
    from lmforge import tasks

    return tasks.of(cfg).name == "image"


def example_input(cfg, batch: int = 1, seed: int = 0) -> Tensor:
    """Random pixels (batch, C, H, W) in [0, 1] of the run's input shape."""
    m = cfg.model
    return torch.rand(batch, m.in_channels, m.image_size, m.image_size, generator=torch.Generator().manual_seed(seed))


def forward_args(cfg) -> dict[int, tuple]:
    x = example_input(cfg, BATCH)
    return {1: (x[:1],), BATCH: (x,)}


def calibration_images(cfg, n: int = CALIBRATION) -> Tensor:
    """``n`` training images (float pixels in [0, 1]) drawn with the run's seed."""
    from lmforge.data.augment import to_float
    from lmforge.tasks.image import read_split

    train = read_split(cfg, "train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.train.seed))[:n]
    return to_float(train.images[pick])


def check(src: Path, cfg, method: str, structured: str | None) -> None:
    """What an image run does not take, before anything is written."""
    if method == "prune" and structured and structured != "channels":
        raise UserError(f"--structured {structured}: {src} is an image run; its structured pruning is --structured channels")
    if method == "prune" and structured == "channels" and cfg.model.name == "vit":
        raise UserError(f"--structured channels: {src} is a ViT (no convolution channels to remove); omit --structured "
                        "for unstructured pruning")


def quantize(model: nn.Module, cfg) -> tuple[dict[str, Tensor], dict, dict]:
    """(tensors, safetensors metadata, compression.json details) of the int8 copy of an image model."""
    if cfg.model.name == "vit":
        from lmforge.models.quantize import int8_state_dict, quantize_int8

        qmodel, tied = quantize_int8(model)
        tensors = int8_state_dict(qmodel, tied)
        layers = sum(k.endswith(".weight_int8") for k in tensors)
        return tensors, {"lmforge": "int8"}, {"int8": {"layers": layers, "kind": "dynamic (Linear layers)",
                                                      "granularity": "per-channel weights, per-token activations"}}
    from lmforge.models.quantize_conv import FORMAT, engine, quantize_static, static_state_dict

    tensors = static_state_dict(quantize_static(model, calibration_images(cfg)))
    layers = sum(k.endswith(".weight_int8") for k in tensors)
    return tensors, {"lmforge": FORMAT, "engine": engine()}, {
        "int8": {"layers": layers, "kind": "static (convolutions and Linear layers)", "engine": engine(),
                 "granularity": "per-channel weights, per-tensor activations", "calibration_images": CALIBRATION}}


def copy_files(src: Path, tmp: Path) -> None:
    if (src / STATS).is_file():
        shutil.copy2(src / STATS, tmp / STATS)


# ----------------------------------------------------------------------------- structured channel pruning
def _scores(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> Tensor:
    s = conv.weight.detach().abs().sum((1, 2, 3))  # (out,)
    if bn is not None:
        s = s * (bn.weight.detach().abs() / (bn.running_var + bn.eps).sqrt())
    return s


def _keep(scores: Tensor, sparsity: float) -> Tensor:
    n = max(1, round((1 - sparsity) * len(scores)))
    return scores.topk(n).indices.sort().values


def _out(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, keep: Tensor) -> None:
    """Keep output channels ``keep`` of ``conv`` (and ``bn``) in place."""
    conv.weight = nn.Parameter(conv.weight.detach()[keep].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach()[keep].clone())
    conv.out_channels = len(keep)
    if bn is not None:
        bn.weight = nn.Parameter(bn.weight.detach()[keep].clone())
        bn.bias = nn.Parameter(bn.bias.detach()[keep].clone())
        bn.running_mean, bn.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
        bn.num_features = len(keep)


def _in(conv: nn.Conv2d, keep: Tensor) -> None:
    conv.weight = nn.Parameter(conv.weight.detach()[:, keep].clone())
    conv.in_channels = len(keep)


@torch.no_grad()
def prune_channels(model: nn.Module, sparsity: float) -> tuple[list[int], int]:
    """Remove ``sparsity`` of the prunable channels of a CNN / ResNet in place (module docstring);
    returns (the widths left, one per convolution / block: ``model.layer_channels``, the widths before).

    >>> from lmforge.config import ModelConfig
    >>> from lmforge.models.cnn import CNN
    >>> m = CNN(ModelConfig(name="cnn", image_size=8, in_channels=1, num_classes=3, channels="4,8", n_embd=16)).eval()
    >>> prune_channels(m, 0.5), m(torch.zeros(2, 1, 8, 8)).shape
    (([2, 2, 4, 4], 24), torch.Size([2, 3]))
    """
    from lmforge.models.cnn import CNN, BasicBlock

    kept: list[int] = []
    if isinstance(model, CNN):
        mods = list(model.features)
        convs = [(i, m) for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
        before = sum(c.out_channels for _, c in convs)
        for j, (i, conv) in enumerate(convs):
            bn = mods[i + 1] if isinstance(mods[i + 1], nn.BatchNorm2d) else None
            width = conv.out_channels
            keep = _keep(_scores(conv, bn), sparsity)
            _out(conv, bn, keep)
            kept.append(len(keep))
            if j + 1 < len(convs):
                _in(convs[j + 1][1], keep)
            else:  # the first Linear layer reads the flattened (C, side, side) map
                fc = model.head[1]
                cols = _flat_columns(keep, fc.in_features // width)
                fc.weight = nn.Parameter(fc.weight.detach()[:, cols].clone())
                fc.in_features = len(cols)
        return kept, before
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise UserError(f"{type(model).__name__}: no convolution channels to prune")
    before = sum(b.conv1.out_channels for b in blocks)
    for b in blocks:
        keep = _keep(_scores(b.conv1, b.bn1), sparsity)
        _out(b.conv1, b.bn1, keep)
        _in(b.conv2, keep)
        kept.append(len(keep))
    return kept, before


def _flat_columns(keep: Tensor, area: int) -> Tensor:
    """Columns of a Linear layer reading a flattened (C, H, W) map that belong to channels ``keep``."""
    return (keep[:, None] * area + torch.arange(area)).flatten()


def structured_details(kept: list[int], before: int) -> dict:
    return {"structured": "channels", "before": before, "after": sum(kept), "per_layer": kept}


# ----------------------------------------------------------------------------- distillation
DATA_FIELDS = ("data", "labels", "val_fraction", "test_fraction", "resize", "color")  # image.*, the teacher's


def student_config(path: str | Path, overrides: dict, tcfg, teacher: Path):
    """The RunConfig of an image student: the recipe at ``path`` (+ ``overrides``) with the teacher's images,
    classes and input shape; its own model, augmentation and schedule. A contradiction is a UserError naming it."""
    from lmforge.config import CompressSection, load_config, load_yaml

    cfg = load_config(path, overrides)
    raw = load_yaml(path)
    given = {f"{s}.{k}" for s, values in raw.items() if isinstance(values, dict) for k in values} | set(overrides)
    where = f"--student-config {path}"
    if cfg.task != "image" or cfg.model.name not in ("cnn", "resnet", "vit"):
        raise UserError(f"{where}: the teacher {teacher} is an image run; the student needs task: image and model.name "
                        f"cnn, resnet or vit (got task {cfg.task or '-'}, model {cfg.model.name})")
    for k in DATA_FIELDS:
        if f"image.{k}" in given and getattr(cfg.image, k) != getattr(tcfg.image, k):
            raise UserError(f"{where}: image.{k} {getattr(cfg.image, k)!r} differs from the teacher's "
                            f"{getattr(tcfg.image, k)!r}: a student learns on the teacher's images (drop it)")
    for k in ("image_size", "in_channels", "num_classes"):
        if getattr(cfg.model, k) and getattr(cfg.model, k) != getattr(tcfg.model, k):
            raise UserError(f"{where}: model.{k} {getattr(cfg.model, k)} differs from the teacher's "
                            f"{getattr(tcfg.model, k)} (set 0 to take the teacher's)")
    if cfg.distill.hidden_weight or cfg.distill.init_embedding:
        raise UserError(f"{where}: distill.hidden_weight and distill.init_embedding are for text models; an image "
                        "student learns from the teacher's logits (set them to 0 / false)")
    if cfg.finetune.base:
        raise UserError(f"{where}: a student is trained from scratch: drop finetune.base")
    import dataclasses

    cfg.image = dataclasses.replace(cfg.image, **{k: getattr(tcfg.image, k) for k in DATA_FIELDS})
    cfg.model = dataclasses.replace(cfg.model, **{k: getattr(tcfg.model, k) for k in ("image_size", "in_channels",
                                                                                      "num_classes")})
    cfg.compress = CompressSection(source=str(teacher))
    return cfg


def student_shape(cfg, student: nn.Module) -> dict:
    m = cfg.model
    return {"model": m.name, "channels": ",".join(map(str, m.stage_widths)) if m.name != "vit" else "",
            "n_layer": m.n_layer, "n_embd": m.n_embd, "params": sum(p.numel() for p in student.parameters())}
