"""Open, check and load run directories: the checks every verb makes before it writes, and
:func:`load_run`, which rebuilds a run's model (through its task) with its weights and tokenizer.

Above the training loop and below the recipes: it imports no recipe and no training code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import UserError
from lmforge.fileio import TEMP_NAME
from lmforge.runs.files import BEST_WEIGHTS, CONFIG, TOKENIZER, TRAIN_STATE, WEIGHTS, check_train_state, load_tensors


def open_run(config_path, overrides: dict, out, resume, verb: str = "pretrain"):
    """(RunConfig, run dir) for a new run (``config_path`` / ``overrides`` into ``out``, which must be new or
    an empty folder) or for continuing one (``resume``: its config.yaml plus ``overrides``).

    Only checks, never writes: a resume is refused before anything in the run dir changes when its
    config.yaml is empty or broken, when its training state is torn or tampered with, or when it holds
    trained weights but no training state (training from step 0 would overwrite them).
    """
    from lmforge.config import RunConfig, apply_overrides, load_config

    if resume is not None and config_path:
        raise UserError("--resume continues a run with its own config.yaml; drop --config (overrides like "
                        "--train.max_steps=N are allowed)")
    if resume is not None:
        run_dir = require_run_dir(resume)
        cfg = apply_overrides(read_run_config(run_dir), overrides, "command line")
        if cfg.compress.source:  # no training state: "resuming" would train a new model over the compressed one
            raise UserError(f"{run_dir}: made by `lmforge compress` from {cfg.compress.source}; it cannot be resumed "
                            "(fine-tune while compressing with --recover-steps N)")
        from lmforge import tasks

        task = tasks.of(cfg)
        made_by = {"classify": "finetune", "translate": "train", "image": "train"}.get(task.name, "pretrain")
        if made_by != verb:  # the other recipe would read the wrong data and write over this run's files
            kind = {"classify": "fine-tuning", "translate": "translation", "image": "image"}.get(task.name, "pretraining")
            raise UserError(f"--resume {run_dir}: a {kind} run; continue it with `lmforge {made_by} --resume {run_dir}`")
        step = check_train_state(run_dir)
        if not (run_dir / TRAIN_STATE).exists() and (run_dir / WEIGHTS).exists():
            raise UserError(f"{run_dir / TRAIN_STATE}: missing, so {run_dir} cannot be resumed: training would start again "
                            f"from step 0 and overwrite the trained {WEIGHTS}; start a new run with --out NEW_DIR "
                            f"(or fine-tune from this one with --base {run_dir})")
        if step and task.tokenizer and not (run_dir / TOKENIZER).is_file():
            raise UserError(f"{run_dir / TOKENIZER}: missing; the run's checkpoint (step {step}) needs the tokenizer it was "
                            "trained with, and a new one would not match it")
        return cfg, run_dir
    if out is None:
        raise UserError("--out RUN_DIR is required to start a run (or --resume RUN_DIR to continue one)")
    cfg = load_config(config_path, overrides) if config_path else apply_overrides(RunConfig(), overrides)
    check_new_run_dir(out)
    return cfg, Path(out)


def check_new_run_dir(out: str | Path) -> Path:
    """``out`` as the folder of a new run: absent or empty. A folder holding anything is refused, so no
    verb writes over files that are not its own (``--out .`` or a folder of weights, say)."""
    if not str(out).strip():
        raise UserError("--out: expected the path of a new run directory, got an empty string")
    run_dir = Path(out)
    if (run_dir / CONFIG).exists():
        raise UserError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a folder (expected a new or empty run directory)")
    if run_dir.is_dir():
        try:  # the temp file of a write that a kill interrupted is this run's own, not the user's
            held = sorted(p.name for p in run_dir.iterdir() if not TEMP_NAME.match(p.name))
        except OSError as e:
            raise UserError(f"--out {run_dir}: cannot read the folder ({(e.strerror or str(e)).lower()})") from None
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise UserError(f"--out {run_dir}: not empty and not an lmforge run (holds {shown}); "
                            "choose a new or empty folder")
    return run_dir


def read_run_config(run_dir: str | Path):
    """The RunConfig of an existing run dir. An empty config.yaml is an error here, not the defaults: a run
    dir's config records how its weights were made."""
    from lmforge.config import from_dict, load_yaml

    path = Path(run_dir) / CONFIG
    data = load_yaml(path)
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: {'empty' if not data else 'not a mapping'}; expected the run's full config "
                        "(section: {field: value}) as lmforge wrote it")
    return from_dict(data, str(path))


def require_run_dir(path: str | Path) -> Path:
    """A folder holding config.yaml, or a UserError saying what was expected."""
    if not str(path).strip():
        raise UserError("run directory: expected a path, got an empty string")
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: run directory not found")
    if not p.is_dir() or not (p / CONFIG).is_file():
        raise UserError(f"{p}: not an lmforge run directory (expected a folder with {CONFIG}, made by `lmforge pretrain --out`)")
    return p


def load_base(ft) -> tuple | None:
    """(model config, backbone state dict, tokenizer) of a fine-tuning run's starting point, or None (from
    scratch): an lmforge pretraining run (``finetune.base``) or a Hugging Face folder / registered model
    (``finetune.base_hf``). An encoder's state dict is its ``bert.*`` part (ELECTRA's: the discriminator)."""
    import dataclasses

    from lmforge import tasks

    if ft.base:
        base = require_run_dir(ft.base)
        cfg_base, model, tok = load_run(base)
        if tasks.of(cfg_base).name == "classify":  # its weights are a backbone plus a head: not what --base rebuilds
            raise UserError(f"finetune.base: {base} is a fine-tuned classifier ({', '.join(cfg_base.finetune.label_names)}); "
                            "--base takes a pretraining run (lmforge pretrain --out)")
        if cfg_base.compress.quantize:
            raise UserError(f"finetune.base: {base} is {cfg_base.compress.quantize}-quantized; fine-tune from the float run "
                            f"it came from ({cfg_base.compress.source})")
        sd, mcfg = model.state_dict(), cfg_base.model
    elif ft.base_hf:
        from lmforge.hf import load_hf_folder
        from lmforge.models import build

        folder = Path(ft.base_hf)
        if not folder.exists():
            from lmforge.data.registry import REGISTRY, get

            if ft.base_hf not in REGISTRY or REGISTRY[ft.base_hf].content != "model":
                raise UserError(f"finetune.base_hf: {ft.base_hf!r} is neither a folder nor a registered model (e.g. minilm-l6)")
            folder = get(ft.base_hf)
        mcfg, sd, tok = load_hf_folder(folder)
        model = build(mcfg)
        model.load_state_dict(sd)
        sd = model.state_dict()
    else:
        return None
    if mcfg.name in ("bert", "electra"):  # the classifier holds the encoder only (ELECTRA's: the discriminator)
        sd = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}
        mcfg = dataclasses.replace(mcfg, name="bert")
    return mcfg, sd, tok


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", verb: str | None = None, best: bool = False):
    """-> (RunConfig, model in eval mode with the run's weights, Tokenizer or None for an image run). Errors name the file.

    The run's task (``config.yaml``'s ``task``, or derived for older run dirs) rebuilds the model: a
    language model, a classifier (a LoRA run's adapters put back onto its base), an int8 copy of either.
    ``verb``: what the caller will do with the model ("export", "compress", ...); given, a pretraining-only
    run (ELECTRA's, which only ``finetune --base`` reads) is refused in one line naming the run and the verb.
    ``best``: the weights of its best evaluation (``best.safetensors``, kept with ``train.keep_best``), not its last.
    """
    from lmforge import tasks
    from lmforge.tokenizer import Tokenizer

    run_dir = require_run_dir(run_dir)
    cfg = read_run_config(run_dir)
    task = tasks.of(cfg)
    if verb and not task.finished:
        from lmforge.tasks.rtd import pretraining_only

        raise pretraining_only(run_dir, verb)
    tok = Tokenizer.load(run_dir / TOKENIZER) if task.tokenizer else None  # an image run has none
    if tok is not None and cfg.model.vocab_size == 0:
        cfg.model.vocab_size = tok.vocab_size
    if tok is not None and cfg.model.vocab_size < tok.vocab_size:
        raise UserError(f"{run_dir / CONFIG}: model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    weights = run_dir / (BEST_WEIGHTS if best else WEIGHTS)
    if best and not weights.exists():
        raise UserError(f"{run_dir}: no {BEST_WEIGHTS} (the run was trained without train.keep_best); leave out --best "
                        "for its last weights")
    tensors, meta = load_tensors(weights, "model weights")
    base = None
    if task.needs_base(cfg):
        found = load_base(cfg.finetune)
        if found is None:
            raise UserError(f"{run_dir / CONFIG}: a LoRA run needs finetune.base or finetune.base_hf to rebuild its base model")
        base = found[1]
    model = task.rebuild(cfg, tok, tensors, meta, str(weights), device, base)
    return cfg, model.to(device).eval(), tok
