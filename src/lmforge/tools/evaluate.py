"""``lmforge evaluate`` and ``lmforge predict``: a finished run's metrics and predictions, from its task.

A language model (task ``lm``): loss, perplexity, bits per character and the unigram baseline; a masked
LM (``mlm``): its masked-token loss; a classifier (``classify``): accuracy, precision / recall / F1 and the
confusion matrix. What each computes lives with the task (:mod:`lmforge.tasks`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge import tasks
from lmforge.runs import loader


def check_max_batches(max_batches: int | None) -> None:
    """``--max-batches``: None (all) or an integer >= 1, else a UserError naming the flag."""
    if max_batches is not None:
        from lmforge.config.fields import check_int

        check_int("--max-batches", max_batches, 1, None)


def evaluate_run(run_dir: str | Path, data: str | None = None, split: str = "val",
                 max_batches: int | None = None, device: str = "cpu",
                 text_column: str | None = None, label_column: str | None = None, compile: bool = False,
                 source_column: str | None = None, target_column: str | None = None, beam: int | None = None,
                 best: bool = False, plot: str | Path | None = None) -> dict:
    """A language model: loss / perplexity on ``split`` of its own token data or of ``data``.
    A classifier: accuracy, precision / recall / F1 and the confusion matrix on ``data`` (default: its own).
    A translation run: BLEU, chrF (sacrebleu, with the signature) and the loss on ``split`` of its own pairs or of
    ``data`` (``source_column`` / ``target_column``), decoded with ``beam`` (default the run's translate.beam).
    ``best``: evaluate the weights of the run's best evaluation (``best.safetensors``), not its last.
    ``plot`` (a folder; image runs): also write the confusion matrix and the worst-classified images as PNGs there.
    ``compile``: run the model through ``torch.compile`` (dynamic shapes; pays off for int8 runs, whose
    quantize / rescale passes it fuses, and for large evaluation sets)."""
    check_max_batches(max_batches)
    if beam is not None:
        from lmforge.config.fields import check_int

        check_int("--beam", beam, 1, None)
    if data is not None and not data.strip():  # not "the run's own data", and never the current folder
        from lmforge.errors import UserError

        raise UserError(f"--data: expected a data set name or a file / folder (omit it for the run's own data), got {data!r}")
    cfg, model, tok = loader.load_run(run_dir, device, verb="evaluate", best=best)
    if plot is not None and tasks.of(cfg).name != "image":
        from lmforge.errors import UserError

        raise UserError(f"--plot: only for image runs ({run_dir} is a {tasks.of(cfg).name} run)")
    if compile:
        model = torch.compile(model, dynamic=True)
    return tasks.of(cfg).evaluate(cfg, model, tok, run_dir, data, split, max_batches=max_batches, device=device,
                                  text_column=text_column, label_column=label_column,
                                  **({} if source_column is None else {"source_column": source_column}),
                                  **({} if target_column is None else {"target_column": target_column}),
                                  **({} if beam is None else {"beam": beam}), **({} if plot is None else {"plot": plot}))


def predict_texts(run_dir: str | Path, texts: list[str], input_file: str | None = None, text_column: str = "text",
                  device: str = "cpu", tsv_quoting: str = "none") -> list[tuple[str, float, str]]:
    """(label, probability, text) for each text, with a fine-tuned classifier run dir.

    ``tsv_quoting``: how a ``.tsv`` ``input_file`` is read, ``"none"`` (plain tab-separated lines) or
    ``"csv"`` (fields quoted the CSV way); see :func:`lmforge.data.tables.read_table`."""
    from lmforge.config.fields import check_text, show
    from lmforge.data.labelled import read_texts
    from lmforge.errors import UserError

    texts = list(texts)
    for i, t in enumerate(texts, 1):  # a command line's bytes that are not UTF-8 arrive as lone surrogates
        if not isinstance(t, str):
            raise UserError(f"predict: text {i}: expected a string, got {show(t)}")
        check_text(f"predict: text {i} of {len(texts)}", t)
    texts += read_texts(input_file, text_column, tsv_quoting=tsv_quoting) if input_file else []  # bad input fails fast
    if not texts:
        raise UserError("predict: no text given (pass texts as arguments or --input FILE)")
    cfg, model, tok = loader.load_run(run_dir, device)
    task = tasks.of(cfg)
    if type(task).predict is tasks.Task.predict:
        raise UserError(f"{run_dir}: not a fine-tuned classifier (predict needs a run made by `lmforge finetune`)")
    return task.predict(cfg, model, tok, texts, device=device)
