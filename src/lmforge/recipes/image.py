"""The image recipe: images -> splits -> channel statistics -> CNN / ResNet / ViT -> ``fit()``, in a run dir.

The run dir holds config.yaml (with the classes, ``image.labels``, and the input shape, ``model.image_size``
/ ``in_channels`` / ``num_classes``, filled in from the data), ``image.json`` (the train split's channel mean
and std, the split sizes) and fit()'s checkpoints; the statistics are also the model's ``pixel_mean`` /
``pixel_std`` buffers, saved with its weights. No tokenizer. A resume reads the same splits again (a
registered set's own, or the deterministic hash split of a folder / file).

Transfer learning: ``lmforge finetune --base IMAGE_RUN`` (``finetune.base``) takes the base's architecture and
weights, replaces the final classifier layer for the new classes, and trains everything (``finetune.mode: full``)
or that layer only (``head``); the new images must have the base's size (``image.resize``, the base's by default).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge import tasks
from lmforge.config import RunConfig, save_config
from lmforge.errors import UserError
from lmforge.recipes.runner import run_in_dir
from lmforge.runs import files as ckpt
from lmforge.training import distributed
from lmforge.training.loop import fit

STATS = "image.json"
VISION = ("cnn", "resnet", "vit")


def train_image(cfg: RunConfig, run_dir: Path, resuming: bool, progress: bool = True) -> dict:
    """Start (config.yaml written by the caller's checks) or continue an image run; fit()'s summary."""
    if not cfg.image.data:
        raise UserError("image.data: no images given (set it in the recipe or pass --image.data digits|mnist|DIR|FILE.npz)")
    if cfg.model.name not in VISION and not cfg.finetune.base:  # a transfer takes the base's model
        raise UserError(f"model.name: task image trains cnn, resnet or vit models, not {cfg.model.name!r}")
    if cfg.train.keep_best not in ("", "loss", "accuracy"):
        raise UserError(f"train.keep_best: an image run keeps loss or accuracy, not {cfg.train.keep_best!r}")
    return run_in_dir(cfg, run_dir, resuming, _train, progress)


def _from_base(cfg: RunConfig) -> dict | None:
    """Transfer (``finetune.base``: an image run): the base's architecture into ``cfg.model`` (its classes
    from the new data) and its weights, but for the final classifier layer, which starts afresh."""
    from lmforge.runs import loader

    base = cfg.finetune.base
    if not base:
        return None
    if cfg.finetune.mode not in ("full", "head"):
        raise UserError(f"finetune.mode: {cfg.finetune.mode} is for text models; an image run fine-tunes full or head")
    bcfg, bmodel, _ = loader.load_run(base, "cpu", verb="finetune")
    if tasks.of(bcfg).name != "image":
        raise UserError(f"finetune.base {base}: a {tasks.of(bcfg).name} run, not an image run")
    head = [n for n, mod in bmodel.named_modules() if isinstance(mod, torch.nn.Linear)][-1]
    state = {k: v for k, v in bmodel.state_dict().items() if not k.startswith(head + ".")}
    cfg.model = bcfg.model
    cfg.model.num_classes = 0  # the new data's
    if not cfg.image.resize and bcfg.image.resize:
        cfg.image.resize = bcfg.image.resize
    cfg.image.color = {1: "gray", 3: "rgb"}[bcfg.model.in_channels] if cfg.image.color == "auto" else cfg.image.color
    return {"state": state, "head": head, "size": bcfg.model.image_size}


def _fill_shape(cfg: RunConfig, train) -> None:
    """The classes and the input shape from the training images; a value the recipe set must agree."""
    c, h, w = train.shape
    if h != w:
        raise UserError(f"{train.source}: images are {w}x{h} pixels; the image models take square images (set image.resize)")
    bad = [n for n in train.label_names if "," in n]
    if bad:
        raise UserError(f"{train.source}: class name {bad[0]!r} holds a comma (image.labels is comma-separated); rename it")
    m = cfg.model
    for field, have in (("image_size", h), ("in_channels", c), ("num_classes", len(train.label_names))):
        set_to = getattr(m, field)
        if set_to and set_to != have:
            raise UserError(f"model.{field}: the recipe says {set_to}, the data ({train.source}) has {have}; use 0 to take "
                            "the data's")
        setattr(m, field, have)
    if m.name == "vit" and h % m.patch_size:
        raise UserError(f"model.patch_size: {h}-pixel images are not a multiple of patch_size {m.patch_size}")
    cfg.image.labels = cfg.image.labels or ",".join(train.label_names)


def _train(cfg: RunConfig, run_dir: Path, resuming: bool, info, progress: bool) -> dict:
    from lmforge.data.augment import channel_stats
    from lmforge.tasks.image import read_split

    task = tasks.get("image")
    base = None if (run_dir / ckpt.TRAIN_STATE).exists() else _from_base(cfg)
    train = read_split(cfg, "train")
    if not cfg.image.labels:  # the run's classes are fixed by its first read: val / test are read against them
        cfg.image.labels = ",".join(train.label_names)
    if len(train.label_names) < 2:
        raise UserError(f"{train.source}: one class only ({train.label_names[0]}); a classifier needs at least two")
    if base and train.shape[1] != base["size"]:
        raise UserError(f"{train.source}: {train.shape[2]}x{train.shape[1]} images, the base {cfg.finetune.base} takes "
                        f"{base['size']}x{base['size']}: set image.resize: {base['size']}")
    if base:
        cfg.model.image_size = cfg.model.in_channels = 0  # checked against the data just below
    val = read_split(cfg, "val")
    _fill_shape(cfg, train)
    mean, std = channel_stats(train.images)
    if base:  # the base's features keep the statistics they were learned with
        mean, std = (base["state"][k].flatten().tolist() for k in ("pixel_mean", "pixel_std"))

    def record() -> None:  # a resume's overrides are recorded once its checkpoint has loaded
        ckpt.atomic_write_text(run_dir / ckpt.CONFIG, save_config(cfg))
        stats = {"mean": mean, "std": std, "shape": list(train.shape), "labels": train.label_names,
                 "train_images": len(train), "val_images": len(val)}
        ckpt.atomic_write_text(run_dir / STATS, json.dumps(stats, indent=2) + "\n")
        ckpt.clean_stale_temps(run_dir)

    if not resuming:
        distributed.main_first(info, record)
    torch.manual_seed(cfg.train.seed)
    model = task.build(cfg, None)
    model.set_stats(mean, std)
    if base:  # the base's features, with the statistics they were learned on; a new classifier layer
        missing, _ = model.load_state_dict(base["state"], strict=False)
        assert all(k.startswith(base["head"] + ".") for k in missing), missing
        if cfg.finetune.mode == "head":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(base["head"] + "."))
        print(f"finetune: {len(base['state'])} tensors from {cfg.finetune.base}; {base['head']} starts afresh "
              f"({cfg.model.num_classes} classes)", flush=True)
    summary = fit(model, task.batches(cfg, None, (train, val)), cfg.train, run_dir, loss_fn=task.loss_for(cfg), info=info,
                  progress=progress, val_accuracy=True,
                  on_restored=(lambda: distributed.main_first(info, record)) if resuming else None)
    summary.update(run_dir=str(run_dir), params=sum(p.numel() for p in model.parameters()), is_main=info.is_main)
    return summary
