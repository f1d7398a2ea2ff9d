"""Tasks: the seam between the kinds of work lmforge does and the machinery that is the same for all of them.

A task owns what differs between, say, language modelling and classification:

- ``build(cfg, tok)``: a fresh model for the run's config: a backbone, with the task's head on it;
- ``batches(cfg, tok, data)``: the batch source ``fit()`` draws from, given the data the recipe prepared,
  and ``run_batches(cfg, run_dir, tok)``: the same from a finished run's own data (pruning recovery);
- ``loss(output, target)``, plus ``evaluator`` (or None) and ``val_accuracy`` for ``fit()``; ``loss_for(cfg)`` and
  ``evaluator_for(cfg, tok, data)`` when they depend on the run's settings (translation: label smoothing, BLEU);
- ``rebuild(cfg, tok, tensors, meta, source, device, base)``: a saved run's model with its weights,
  for the run loader (``base``: the backbone state dict of a run whose weights hold adapters only);
- ``evaluate(cfg, model, tok, run_dir, data, split, **options) -> dict``: its metrics;
- ``predict(cfg, model, tok, texts) -> [(label, score, text)]`` where that makes sense.

The training loop, the run loader, ``evaluate`` and the server core ask the task; a new task is one module
with a :class:`Task` subclass plus :func:`register` (from inside lmforge or outside it)::

    from lmforge import tasks

    class Regression(tasks.Task):
        name = "regress"
        ...

    tasks.register(Regression())

A run's config names its task (``task: classify``); run dirs written before that field existed get
theirs from :func:`derive`. Tasks sit above data and models and below the training loop: they import
neither the training code nor the run loader, the recipes or the tools.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

from lmforge.errors import UserError

# the built-in tasks, imported on first use: name -> module defining it
BUILTIN = {"lm": "lmforge.tasks.lm", "mlm": "lmforge.tasks.mlm", "rtd": "lmforge.tasks.rtd",
           "classify": "lmforge.tasks.classify", "translate": "lmforge.tasks.translate", "image": "lmforge.tasks.image"}
_REGISTRY: dict[str, Task] = {}


class Task:
    """The defaults every task shares; a task overrides what it owns (see the module docstring)."""

    name: ClassVar[str] = ""
    evaluator: ClassVar[Any] = None  # fit(evaluator=...): (model, batches, device, dtype, info) -> (loss, {name: value})
    val_accuracy: ClassVar[bool] = False  # fit() logs the validation accuracy too
    finished: ClassVar[bool] = True  # False: a pretraining-only run (ELECTRA's) that evaluate / export / ... refuse
    tokenizer: ClassVar[bool] = True  # False: the task reads no text (images); its run dirs hold no tokenizer.json

    def build(self, cfg, tok):
        raise NotImplementedError

    def needs_base(self, cfg) -> bool:
        """Whether :meth:`rebuild` needs the backbone of the run's base (a LoRA run's weights are adapters)."""
        return False

    def batches(self, cfg, tok, data):
        raise NotImplementedError

    def run_batches(self, cfg, run_dir: Path, tok):
        """A finished run's own training data as a batch source (what `compress --recover-steps` trains on)."""
        raise UserError(f"task {self.name}: has no training data of its own to fine-tune on")

    def loss(self, output, target):
        raise NotImplementedError

    def loss_for(self, cfg):
        """The loss a run of ``cfg`` trains with (a task with settings, such as label smoothing, binds them)."""
        return self.loss

    def evaluator_for(self, cfg, tok, data):
        """``fit(evaluator=...)`` for a run of ``cfg`` on ``data`` (what :meth:`batches` got); default the
        task's fixed :attr:`evaluator` (None: fit() logs the plain validation loss)."""
        return self.evaluator

    def rebuild(self, cfg, tok, tensors: dict, meta: dict, source: str, device, base=None):
        """The run's model with its saved weights (``source`` names the weights file in errors)."""
        model = self.build(cfg, tok)
        load_weights(cfg, model, tensors, source, device)
        return model

    def evaluate(self, cfg, model, tok, run_dir, data, split: str, **options) -> dict:
        raise UserError(f"task {self.name}: has no evaluation")

    def predict(self, cfg, model, tok, texts: list[str]) -> list[tuple[str, float, str]]:
        raise UserError(f"task {self.name}: has no predictions for texts (predict needs a fine-tuned classifier)")


def load_weights(cfg, model, tensors: dict, source: str, device) -> None:
    """Names- and shapes-checked loading of a run's weights; for a run written by `lmforge compress --method
    int8` (``compress.quantize``), the swap of its Linear layers for int8 ones holding the stored weights."""
    from lmforge.runs.files import load_into

    if cfg.compress.quantize != "int8":
        load_into(model, tensors, source)
        return
    import torch

    if torch.device(device).type != "cpu":
        raise UserError(f"{source}: int8 weights run on the CPU only (dynamic quantization); use --device cpu")
    from lmforge.models.quantize import load_int8

    load_int8(model, tensors, source)


def register(task: Task) -> Task:
    """Add (or replace) a task under ``task.name``; returns it."""
    if not isinstance(task, Task) or not task.name or not task.name.isidentifier():
        raise ValueError(f"register: expected a Task instance with an identifier as its name, got {task!r}")
    _REGISTRY[task.name] = task
    return task


def names() -> list[str]:
    """The tasks that can be asked for: the built-in ones and every registered one."""
    return sorted(set(BUILTIN) | set(_REGISTRY))


def get(name: str) -> Task:
    """The task called ``name`` (a built-in one is imported on first use), or a UserError naming the choices."""
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        raise UserError(f"task: expected one of {', '.join(names())}, got {name!r}")
    return _REGISTRY[name]


def derive(cfg) -> str:
    """The task of a config that does not name one (a run dir written before ``task`` existed):
    a fine-tuned run (``finetune.labels``) classifies; otherwise the model family's pretraining objective.

    >>> from lmforge.config import RunConfig, ModelConfig
    >>> derive(RunConfig()), derive(RunConfig(model=ModelConfig(name="bert")))
    ('lm', 'mlm')
    """
    if cfg.finetune.labels or cfg.model.name == "lstm":
        return "classify"
    natural = {"gpt": "lm", "bert": "mlm", "electra": "rtd", "seq2seq": "translate", "lstm_seq2seq": "translate",
               "cnn": "image", "resnet": "image", "vit": "image"}
    if cfg.data.objective not in ("", "auto"):
        return {"clm": "lm", "mlm": "mlm", "rtd": "rtd"}.get(cfg.data.objective, cfg.data.objective)
    return natural.get(cfg.model.name, "lm")


def of(cfg) -> Task:
    """The task of a run's config: its ``task`` field, or :func:`derive`'s answer for older run dirs."""
    return get(cfg.task or derive(cfg))
