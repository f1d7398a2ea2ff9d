"""``lmforge train``: one verb for any task's recipe. The task comes from the recipe (its ``task:`` field,
or derived from the model family, as for an older run dir); a resume takes the run's own.

- ``lm``, ``mlm``, ``rtd``: the pretraining recipe (:func:`lmforge.recipes.pretrain.pretrain`);
- ``classify``: the fine-tuning recipe (:func:`lmforge.recipes.finetune.finetune`);
- ``translate``: the translation recipe (:mod:`lmforge.recipes.translate`);
- ``image``: the image-classification recipe (:mod:`lmforge.recipes.image`).

``lmforge pretrain`` and ``lmforge finetune`` stay as they are: they are this verb for their tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge import tasks
from lmforge.errors import UserError
from lmforge.runs import loader

RECIPE_OF = {"lm": "pretrain", "mlm": "pretrain", "rtd": "pretrain", "classify": "finetune", "translate": "train", "image": "train"}


def task_of_recipe(config_path, overrides: dict, resume) -> str:
    """The task a `train` call runs: the run's (resume) or the recipe's with the overrides, checked."""
    from lmforge.config import RunConfig, apply_overrides, load_config

    if resume is not None:
        cfg = loader.read_run_config(loader.require_run_dir(resume))
    else:
        cfg = load_config(config_path, overrides) if config_path else apply_overrides(RunConfig(), overrides)
    name = cfg.task or tasks.derive(cfg)
    tasks.get(name)  # an unknown task is a one-line error naming the known ones
    if name not in RECIPE_OF:
        raise UserError(f"task: {name!r} has no training recipe in lmforge (recipes: {', '.join(sorted(RECIPE_OF))})")
    return name


def train(config_path: str | None = None, overrides: dict[str, Any] | None = None, out: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True) -> dict:
    """Start or continue a run of any task's recipe; returns the recipe's summary."""
    overrides = dict(overrides or {})
    name = task_of_recipe(config_path, overrides, resume)
    recipe = RECIPE_OF[name]
    if recipe == "pretrain":
        from lmforge.recipes.pretrain import pretrain

        return pretrain(config_path, overrides, out, resume, progress)
    if recipe == "finetune":
        from lmforge.recipes.finetune import finetune

        return finetune(config_path, overrides, out, resume, progress)
    cfg, run_dir = loader.open_run(config_path, overrides, out, resume, verb="train")
    cfg.task = name
    if name == "image":
        from lmforge.recipes.image import train_image

        return train_image(cfg, Path(run_dir), resume is not None, progress)
    from lmforge.recipes.translate import train_translation

    return train_translation(cfg, Path(run_dir), resume is not None, progress)
