"""``lmforge compress``: int8 quantization, pruning or distillation of a run into a new run dir, with a trade-off report.

Distillation (:mod:`lmforge.tools.compress.distill`) trains a new, smaller student from a config; the other
methods transform the run's own model. :func:`run` is the entry ``lmforge compress`` calls with every flag it
parsed: it checks which flags go with which method, then calls :func:`compress` or ``distill``.

The output is an ordinary run dir (``config.yaml``, ``tokenizer.json``, ``model.safetensors``, and
for a language model its ``data/`` token shards, hard-linked when possible), so ``load_run`` and every
verb read it; ``config.yaml``'s ``compress`` section says what was done (``compress.quantize: int8``
makes ``load_run`` rebuild the int8 layers) and ``model.layer_n_head`` / ``layer_n_inner`` the shapes
left by structured pruning. It also holds:

- ``compression.json``: size_mb, params (stored weights; tied ones once), params_nonzero,
  latency_ms_b1 / latency_ms_b32 (one forward pass, batch 1 / 32 x ``seq_len`` tokens), throughput,
  decode_ms_per_token (GPT language models), metric (a classifier: accuracy and macro F1 on its
  validation split; an LM: validation loss and perplexity, from :mod:`lmforge.tools.evaluate`), the same
  keys under ``original`` (distill: the teacher), and ``delta`` (ratios and metric differences). Both
  models are timed in this process on the same inputs, alternately, median of ``repeats`` runs after
  2 warm-up runs.
- ``compression.md``: the same figures as a two-row Markdown table.

The folder is built under a temporary name next to ``out`` and renamed at the end: a failure (bad
arguments are checked before anything is written) leaves nothing behind.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tools.compress.common import (
    build_run,
    check_measure_args,
    check_out,
    link_or_copy,
    plain_model,
)

METHODS = ("int8", "prune")
SOURCE_TOKENIZER = "source_tokenizer.json"  # lmforge.tasks.translate.SOURCE_TOKENIZER
STRUCTURES = ("heads", "neurons", "channels")  # channels: image runs (cnn, resnet)


def _check_args(method, sparsity, structured, recover_steps, repeats, gradual=False, recover_lr=None,
                max_batches=None) -> None:
    from lmforge.config.fields import check_float, check_int, show

    if method not in METHODS:
        raise UserError(f"--method {method}: unknown compression method (expected one of: {', '.join(METHODS)})")
    if method == "prune":
        if not (isinstance(sparsity, (int, float)) and 0.0 < sparsity < 1.0):
            raise UserError(f"--sparsity: expected a fraction strictly between 0 and 1 for --method prune, got {show(sparsity)}")
        if structured not in (None, *STRUCTURES):
            raise UserError(f"--structured {structured}: expected one of {', '.join(STRUCTURES)}")
    elif sparsity is not None or structured or recover_steps or gradual:
        raise UserError("--sparsity, --structured, --recover-steps and --gradual apply to --method prune, not int8")
    check_int("--recover-steps", recover_steps, 0, None)
    if recover_lr is not None:
        check_float("--recover-lr", recover_lr, 0.0)
    check_measure_args(max_batches, repeats)
    if gradual and (structured or recover_steps < 2):
        raise UserError("--gradual prunes during the recovery: it needs --recover-steps of 2 or more and unstructured "
                        "pruning (no --structured)")


def compress(run_dir: str | Path, method: str, out: str | Path, sparsity: float | None = None,
             structured: str | None = None, recover_steps: int = 0, recover_lr: float | None = None,
             gradual: bool = False, recover_distill: bool = True, data: str | None = None, split: str = "val",
             max_batches: int | None = None, repeats: int = 10, progress: bool = True) -> dict:
    """Compress the run in ``run_dir`` into the new run dir ``out``; returns what compression.json holds.

    ``method``: ``int8`` or ``prune`` (with ``sparsity`` in (0, 1), ``structured`` None | heads | neurons,
    ``recover_steps`` fine-tuning steps at peak LR ``recover_lr``, default a tenth of the run's train.lr: a LoRA
    run's adapter LR, for one, is far too high for all the weights). ``gradual``: start the recovery dense and
    prune along a cubic schedule over its first half (:class:`prune.GradualMasks`) instead of all at once.
    ``recover_distill``: the recovery learns the original model's outputs (soft targets, T=2, weight 0.9)
    beside the labels. ``data`` / ``split`` /
    ``max_batches``: what the metric is computed on (default: the run's own validation data).
    """
    if method == "distill":
        raise UserError("--method distill trains a new student from a teacher: call distill(teacher, student_config, out) "
                        "or run('distill', teacher=..., student_config=..., out=...)")
    if not run_dir:
        raise UserError(f"--method {method}: give the run directory to compress (lmforge compress RUN_DIR ...)")
    _check_args(method, sparsity, structured, recover_steps, repeats, gradual, recover_lr, max_batches)
    src, out = loader.require_run_dir(run_dir), Path(out)
    check_out(src, out)
    cfg, model, tok = loader.load_run(src, verb="compress")
    if cfg.compress.quantize:
        raise UserError(f"{src}: already {cfg.compress.quantize}-quantized; compress its source run instead "
                        f"({cfg.compress.source or 'unknown'})")
    _check_task(src, cfg, method, structured, recover_steps)
    if structured and cfg.model.name == "lstm":
        raise UserError(f"--structured {structured}: {src} is an LSTM, which has no attention heads or MLP neurons; "
                        "omit --structured for unstructured pruning")

    def write(tmp: Path) -> dict:
        return _write_run(tmp, src, cfg, model, tok, method, sparsity, structured, recover_steps, recover_lr, progress,
                          gradual, recover_distill)

    return build_run(src, out, write, data, split, max_batches, repeats)


def _check_task(src: Path, cfg, method: str, structured, recover_steps) -> None:
    """What a translation run (an encoder-decoder) does not take: structured pruning, a recovery; what an image
    run takes instead of heads / neurons (channels), and what a text run cannot (channels)."""
    from lmforge.tools.compress import image
    from lmforge.tools.compress.translation import is_translation

    if image.is_image(cfg):
        image.check(src, cfg, method, structured)
        return
    if structured == "channels":
        raise UserError(f"--structured channels: only for image runs (cnn, resnet); {src} is a {cfg.model.name} model "
                        "(use heads or neurons)")

    if method != "prune" or not is_translation(cfg):
        return
    if structured:
        raise UserError(f"--structured {structured}: not supported for {src}, a translation run ({cfg.model.name}); "
                        "omit --structured for unstructured pruning, or use --method int8")
    if recover_steps:
        raise UserError(f"--recover-steps: not supported for {src}, a translation run ({cfg.model.name}); "
                        "prune it without a recovery (--recover-steps 0), or use --method int8")


def run(method: str, run_dir: str | Path | None = None, *, out: str | Path, teacher: str | Path | None = None,
        student_config: str | Path | None = None, overrides: dict | None = None, sparsity: float | None = None,
        structured: str | None = None, recover_steps: int = 0, recover_lr: float | None = None, gradual: bool = False,
        recover_distill: bool = True, data: str | None = None, split: str = "val", max_batches: int | None = None,
        repeats: int = 10, progress: bool = True) -> dict:
    """``lmforge compress``: one entry for every method, taking all of its flags, which checks their combination.

    ``method`` ``int8`` / ``prune`` compress ``run_dir`` (:func:`compress`; ``sparsity`` ... ``recover_distill``
    are prune's); ``distill`` trains a student shaped by the recipe ``student_config`` (+ config ``overrides``,
    e.g. ``{"train.max_steps": "500"}``) on the run ``teacher`` (:func:`~lmforge.tools.compress.distill.distill`)
    and takes no ``run_dir``. A flag of the other method is a one-line UserError naming it, as the CLI's (the
    CLI passes everything it parsed here, so Python callers get the same checks)::

        >>> run("distill", teacher="runs/clf", student_config="s.yaml", out="runs/s", sparsity=0.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lmforge.errors.UserError: --sparsity, ... apply to --method prune, not distill
    """
    if method not in (*METHODS, "distill"):
        raise UserError(f"--method {method}: unknown compression method (expected one of: {', '.join(METHODS)}, distill)")
    if method == "distill":
        if run_dir or not teacher or not student_config:
            raise UserError("--method distill takes --teacher RUN_DIR and --student-config FILE.yaml (no positional RUN_DIR)")
        if sparsity is not None or structured or recover_steps or recover_lr is not None or gradual:
            raise UserError("--sparsity, --structured, --recover-steps, --recover-lr and --gradual apply to --method prune, "
                            "not distill")
        from lmforge.tools.compress.distill import distill

        return distill(teacher, student_config, out, overrides=overrides, data=data, split=split,
                       max_batches=max_batches, repeats=repeats, progress=progress)
    if teacher or student_config or overrides:
        raise UserError("--teacher, --student-config and config overrides (--train.*, --distill.* ...) apply to --method distill")
    return compress(run_dir, method, out, sparsity=sparsity, structured=structured, recover_steps=recover_steps,
                    recover_lr=recover_lr, gradual=gradual, recover_distill=recover_distill, data=data, split=split,
                    max_batches=max_batches, repeats=repeats, progress=progress)


def _write_run(tmp: Path, src: Path, cfg, model, tok, method, sparsity, structured, recover_steps, recover_lr,
               progress, gradual=False, recover_distill=True) -> dict:
    """Compress ``model`` and write the run files into ``tmp``; returns what was done."""
    from lmforge.config import save_config

    new = copy.deepcopy(cfg)
    new.compress.source = str(src)
    model = plain_model(model, cfg)
    if cfg.finetune.labels and cfg.finetune.mode == "lora":
        new.finetune.mode = "full"  # the adapters are merged: the run holds the whole model
    details: dict = {"method": method}
    from lmforge.tools.compress import image

    if method == "int8" and image.is_image(cfg):
        tensors, meta, more = image.quantize(model, cfg)
        new.compress.quantize = "int8"
        details.update(more)
    elif method == "int8":
        from lmforge.models.quantize import int8_state_dict, quantize_int8

        qmodel, tied = quantize_int8(model)
        tensors, meta = int8_state_dict(qmodel, tied), {"lmforge": "int8"}
        new.compress.quantize = "int8"
        w8 = [t for k, t in tensors.items() if k.endswith(".weight_int8")]
        q8 = [t for k, t in tensors.items() if k.endswith((".weight_int8", ".weight_scale", ".weight_zero_point"))]
        details["int8"] = {"layers": len(w8), "granularity": "per-channel",
                           "linear_weights_mb_float32": round(sum(t.numel() for t in w8) * 4 / 1e6, 4),
                           "linear_weights_mb_int8": round(sum(t.numel() * t.element_size() for t in q8) / 1e6, 4),
                           "tied_embeddings_from_int8_head": tied}
    else:
        from lmforge.tools.compress import prune

        masks, new.compress.structured = None, structured or ""
        teacher = copy.deepcopy(model) if recover_steps and recover_distill else None  # the model before pruning
        if structured == "channels":
            kept, before = image.prune_channels(model, sparsity)
            new.model = dataclasses.replace(new.model, layer_channels=",".join(map(str, kept)))  # validated again
            new.compress.sparsity = round(1 - sum(kept) / before, 6)
            details["pruned"] = image.structured_details(kept, before)
        elif structured:
            kept, before = prune.prune_structured(model, structured, sparsity)
            key = "layer_n_head" if structured == "heads" else "layer_n_inner"
            new.model = dataclasses.replace(new.model, **{key: ",".join(map(str, kept))})  # validated again
            new.compress.sparsity = round(1 - sum(kept) / before, 6)
            details["pruned"] = {"structured": structured, "before": before, "after": sum(kept), "per_block": kept}
        elif gradual:  # pruned while recovering: dense at step 0, the full sparsity half-way
            masks = prune.GradualMasks(model, sparsity, ramp=recover_steps // 2, every=max(1, recover_steps // 40))
        else:
            masks = prune.magnitude_masks(prune.prunable(model), sparsity)
            prune.apply_masks(model, masks)
        if recover_steps:
            lr = recover_lr if recover_lr is not None else cfg.train.lr / 10  # it starts near a trained optimum
            s = prune.recover(model, cfg, src, tok, recover_steps, lr, tmp, masks, progress, teacher=teacher)
            details["recovery"] = {"steps": recover_steps, "lr": lr, "gradual": gradual, "distill": teacher is not None,
                                   **{k: s[k] for k in ("train_loss", "val_loss", "val_accuracy", "seconds")
                                      if s.get(k) is not None}}
        if masks is not None:
            masks = masks.masks if isinstance(masks, prune.GradualMasks) else masks
            zeros, total = prune.sparsity_of(prune.prunable(model))
            new.compress.sparsity = round(zeros / total, 6)
            details["pruned"] = {"structured": None, "weights": total, "zeros": zeros, "sparsity": zeros / total,
                                 "tensors": len(masks)}
        details["sparsity"] = new.compress.sparsity
        tensors, meta = model.state_dict(), {"lmforge": "pruned"}
    ckpt.atomic_write_text(tmp / ckpt.CONFIG, save_config(new))
    if tok is not None:  # an image run has none
        shutil.copy2(src / ckpt.TOKENIZER, tmp / ckpt.TOKENIZER)
    image.copy_files(src, tmp)
    if (src / SOURCE_TOKENIZER).is_file():  # a translation run with translate.tokenizer: separate
        shutil.copy2(src / SOURCE_TOKENIZER, tmp / SOURCE_TOKENIZER)
    ckpt.save_tensors(tmp / ckpt.WEIGHTS, tensors, meta)
    if not cfg.finetune.labels and (src / "data").is_dir():  # `lmforge evaluate` reads an LM run's own shards
        shutil.copytree(src / "data", tmp / "data", copy_function=link_or_copy)
    return details
