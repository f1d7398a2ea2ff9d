"""The fine-tuning recipe: a pretrained backbone (ours or Hugging Face's) + a classification head.

Starting points (``finetune.base`` / ``finetune.base_hf``, or neither to train from scratch):

- an lmforge run dir: its GPT (pooling ``last``) or BERT encoder (pooling ``cls``) and tokenizer;
- a Hugging Face folder or a registered model (``minilm-l6``) through :func:`lmforge.hf.load_hf_folder`;
- ``model.name: lstm``: the LSTM baseline, with a tokenizer trained on the training texts.

Modes: ``full`` trains everything (optionally freezing the lowest blocks and decaying the LR
layer by layer), ``head`` only the head, ``lora`` adapters + head; a LoRA run dir stores only the
adapter and head weights and points at its base through config.yaml.

Batches are a pure function of (seed, step) as ``fit()`` requires: step s takes positions
[s*B, (s+1)*B) of an endless stream of per-epoch permutations, so resume is exact here too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lmforge import tasks
from lmforge.config import FinetuneConfig, RunConfig, save_config
from lmforge.devices import resolve_device
from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tokenizer import Tokenizer
from lmforge.training import distributed
from lmforge.training.loop import fit


def pretrain_base(ft: FinetuneConfig, progress: bool = True) -> None:
    """Run ``ft.base_recipe`` into ``ft.base`` unless that run already finished: start it if the dir
    is missing, resume it if a checkpoint stopped short of the recipe's max_steps (e.g. after Ctrl-C)."""
    from lmforge.config import load_config
    from lmforge.recipes.pretrain import pretrain

    recipe, base = Path(ft.base_recipe), Path(ft.base)
    if not recipe.is_file():
        raise UserError(f"finetune.base_recipe: {recipe}: no such file (expected a pretraining recipe, e.g. configs/gpt-zh-reviews.yaml)")
    if not (base / ckpt.CONFIG).exists():
        print(f"pretraining the base model first: {recipe} -> {base}", flush=True)
        pretrain(str(recipe), out=base, progress=progress)
        return
    done, want = ckpt.saved_step(base), load_config(base / ckpt.CONFIG).train.max_steps
    if done < want or not (base / ckpt.WEIGHTS).exists():
        print(f"continuing the base model's pretraining: {base} (step {done} of {want})", flush=True)
        pretrain(resume=base, progress=progress)


def _layer_scale(n_layer: int, decay: float):
    """lr_scale(name): decay ** (n_layer - i) for block i, decay ** (n_layer + 1) for embeddings, 1 for the head."""
    block = re.compile(r"(?:^|\.)h\.(\d+)\.")

    def scale(name: str) -> float:
        if not name.startswith("backbone."):
            return 1.0
        m = block.search(name)
        return decay ** (n_layer - int(m.group(1))) if m else (decay ** (n_layer + 1) if "ln_f" not in name else 1.0)

    return scale


def _freeze(model: torch.nn.Module, ft: FinetuneConfig, lora_cfg) -> None:
    if ft.mode == "head":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("head.")
    elif ft.mode == "lora":
        from lmforge.models.lora import apply_lora, mark_trainable

        apply_lora(model, lora_cfg)
        mark_trainable(model, extra=("head.*",))
    elif ft.freeze_layers:
        block = re.compile(r"(?:^|\.)h\.(\d+)\.")
        for name, p in model.named_parameters():
            if name.startswith("backbone."):
                m = block.search(name)
                if m is None and "ln_f" not in name or m is not None and int(m.group(1)) < ft.freeze_layers:
                    p.requires_grad = False


# ----------------------------------------------------------------------------- recipe
def _resolve(cfg: RunConfig, run_dir: Path, resuming: bool):
    """Tokenizer, model config and (fresh-start only) backbone weights, written into the run dir."""
    from lmforge.data.labelled import load_labelled
    from lmforge.data.registry import is_registered

    ft = cfg.finetune
    base = None if resuming else loader.load_base(ft)
    tok_path = run_dir / ckpt.TOKENIZER
    train = load_labelled(ft.data, "train", ft.text_column, ft.label_column, ft.label_names or None, tsv_quoting=ft.tsv_quoting)
    found = sorted(set(train.labels))
    if len(found) < 2:  # it would train to predict that label and report val accuracy nan
        one = f"only the label {train.label_names[found[0]]!r}" if found else "no label"
        raise UserError(f"{train.source}: the training data has {one}; a classifier needs examples of at least two "
                        f"labels (column {ft.label_column!r})")
    if not ft.labels:
        ft.labels = ",".join(train.label_names)
    val = (load_labelled(ft.data, "val", ft.text_column, ft.label_column, ft.label_names, tsv_quoting=ft.tsv_quoting)
           if is_registered(ft.data) else None)
    if tok_path.exists():
        tok = Tokenizer.load(tok_path)
    elif base is not None:
        tok = base[2]
    elif cfg.data.tokenizer:
        tok = Tokenizer.load(cfg.data.tokenizer)
    else:
        from lmforge.tokenizer import train_tokenizer

        tok = train_tokenizer(train.texts, cfg.data.vocab_size)
    if base is not None:
        cfg.model = base[0]
    if ft.dropout >= 0:
        cfg.model.dropout = ft.dropout
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = tok.vocab_size
    if cfg.model.vocab_size < tok.vocab_size:
        raise UserError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's ({tok.vocab_size}): "
                        "the base run's tokenizer and checkpoint disagree")
    return tok, train, val, (base[1] if base is not None else None)


def _is_image_run(base: str) -> bool:
    """Whether ``base`` is an existing image run dir (one still to be pretrained, or missing, is not)."""
    from lmforge import tasks

    if not (Path(base) / ckpt.CONFIG).is_file():
        return False
    return tasks.of(loader.read_run_config(base)).name == "image"


def finetune(config_path: str | None = None, overrides: dict[str, Any] | None = None, out: str | Path | None = None,
             resume: str | Path | None = None, progress: bool = True) -> dict:
    """Start or continue a fine-tuning run; returns fit()'s summary plus the validation accuracy."""
    cfg, run_dir = loader.open_run(config_path, overrides or {}, out, resume, verb="finetune")
    if cfg.task == "image" or (not cfg.task and cfg.finetune.base and not cfg.finetune.base_recipe
                               and _is_image_run(cfg.finetune.base)):
        from lmforge.recipes.image import train_image  # transfer: an image run's features onto another image set

        cfg.task = "image"
        return train_image(cfg, Path(run_dir), resume is not None, progress)
    if cfg.task not in ("", "classify"):
        raise UserError(f"task: {cfg.task!r}: `lmforge finetune` trains classifiers (task classify)")
    cfg.task = "classify"  # every run dir names its task
    if resume is None and not cfg.finetune.data:
        raise UserError("finetune.data: no labelled data given (set it in the recipe or pass --finetune.data NAME|FILE)")
    if resume is None and cfg.finetune.base_recipe:
        pretrain_base(cfg.finetune, progress)
    info = distributed.init(resolve_device(cfg.train.device).type)
    existed = {p.name for p in run_dir.iterdir()} if run_dir.exists() else None
    clean = False  # set once this rank finished normally: only then wait for the others at shutdown
    try:
        if cfg.finetune.base_hf and not Path(cfg.finetune.base_hf).exists():  # a registered model: rank 0 fetches it
            from lmforge.data.registry import REGISTRY, get

            if cfg.finetune.base_hf in REGISTRY:
                distributed.main_first(info, lambda: get(cfg.finetune.base_hf))
        result = _run(cfg, run_dir, resume is not None, info, progress)
        clean = True
        return result
    except Exception:  # an interruption (KeyboardInterrupt) is no failure: the run can be resumed
        if resume is None and info.is_main and not (run_dir / ckpt.TRAIN_STATE).exists():
            ckpt.discard_new_files(run_dir, existed)  # a run that failed before training leaves nothing behind
        raise
    finally:
        distributed.shutdown(info, clean)


def _run(cfg: RunConfig, run_dir: Path, resuming: bool, info, progress: bool) -> dict:
    tok, train, val, backbone_sd = _resolve(cfg, run_dir, resuming=resuming)

    def record() -> None:  # a resume records its overrides only once its checkpoint has loaded
        if info.is_main:
            ckpt.atomic_write_text(run_dir / ckpt.CONFIG, save_config(cfg))
            if not (run_dir / ckpt.TOKENIZER).exists():
                tok.save(run_dir / ckpt.TOKENIZER)
            ckpt.clean_stale_temps(run_dir)
        distributed.barrier(info)

    if not resuming:
        record()
    ft, task = cfg.finetune, tasks.get(cfg.task)
    if val is None:  # a single file: hold out a stratified tenth for validation
        from lmforge.data.labelled import stratified_split

        train, val = stratified_split(train, (0.9, 0.1))
    torch.manual_seed(cfg.train.seed)
    model = task.build(cfg, tok)
    if backbone_sd is not None:
        model.backbone.load_state_dict(backbone_sd)
    _freeze(model, ft, cfg.lora)
    lr_scale = _layer_scale(cfg.model.n_layer, ft.layer_lr_decay) if ft.layer_lr_decay < 1.0 else None
    batches = task.batches(cfg, tok, (train, val))
    summary = fit(model, batches, cfg.train, run_dir, loss_fn=task.loss, info=info, progress=progress, lr_scale=lr_scale,
                  val_accuracy=task.val_accuracy, on_restored=record if resuming else None)
    if ft.mode == "lora" and info.is_main:  # the run dir keeps adapters + head; the base is named in config.yaml
        from lmforge.models.lora import lora_state_dict

        ckpt.save_tensors(run_dir / ckpt.WEIGHTS, lora_state_dict(model, extra=("head.*",)), {"lmforge": "lora"})
    if summary.get("val_accuracy") is None:  # fit() measured it at its last evaluation, unless there was none
        summary["val_accuracy"] = accuracy(model, batches.eval_batches())
    summary["run_dir"], summary["is_main"] = str(run_dir), info.is_main
    return summary


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches) -> float:
    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    for (ids, mask), y in batches:
        right += (model(ids.to(device), mask.to(device)).argmax(-1).cpu() == y).sum().item()
        total += len(y)
    return right / max(total, 1)
