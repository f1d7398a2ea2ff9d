"""The served models: run dirs checked for pickles, loaded with ``checkpoint.load_run``, named.

A model's id is its run dir's folder name (``runs/tour`` -> ``tour``). When two run dirs share a
folder name, each of those is named by its path as given instead (``runs/a/lm``, ``runs/b/lm``);
the same run dir given twice is an error. GPT language models serve ``/v1/completions``; fine-tuned
classifiers (GPT, BERT-encoder or LSTM, int8 / pruned / LoRA alike) serve ``/v1/classify``; translation
runs (seq2seq or lstm_seq2seq, int8 alike) serve ``/v1/translate``; a BERT masked-LM run serves none and
is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lmforge import tasks
from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tools.serve.limits import APIError

ENDPOINTS = {"completion": "/v1/completions", "classification": "/v1/classify", "translation": "/v1/translate"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


@dataclass
class ServedModel:
    id: str
    run_dir: Path
    kind: str  # "completion" (a GPT LM) | "classification" | "translation"
    cfg: object
    model: object
    tok: object
    labels: list[str] = field(default_factory=list)
    max_length: int = 0  # classify: inputs are truncated to this many tokens; completion: the context window
    created: int = 0
    src_tok: object = None  # translation: the source side's tokenizer (``tok`` for a joint vocabulary)
    images: bool = False  # classification of images (an image run): ``input`` holds base64 image files

    def describe(self) -> dict:
        """The OpenAI model object, plus what a client needs to call it."""
        out = {"id": self.id, "object": "model", "created": self.created, "owned_by": "lmforge", "kind": self.kind,
               "family": self.cfg.model.name, "context_length": self.max_length}
        if self.cfg.compress.quantize or self.cfg.compress.structured or self.cfg.compress.sparsity:
            out["compression"] = self.cfg.compress.quantize or f"pruned {self.cfg.compress.structured or 'unstructured'}"
        if self.labels:
            out["labels"] = self.labels
        if self.images:
            m = self.cfg.model
            out.update(input="base64 image", image_size=m.image_size, channels=m.in_channels)
        if self.kind == "translation":
            out["beam"] = self.cfg.translate.beam
        return out


def served(models: dict[str, ServedModel], model_id: str, kind: str) -> ServedModel:
    """The served model ``model_id`` of ``kind`` ("completion", "classification" or "translation"), else a 404 /
    400 APIError."""
    sm = models.get(model_id)
    if sm is None:
        raise APIError(404, f"model {model_id!r} not found (served: {', '.join(models)})", "model_not_found", "model")
    if sm.kind != kind:
        other = ENDPOINTS.get(sm.kind, "another endpoint")
        raise APIError(400, f"model {model_id!r} is a {sm.kind} model; use {other}", "wrong_model_kind", "model")
    return sm


def _pickle_kind(path: Path) -> str | None:
    """'a pickle' / 'a zip archive ...' if the file starts like one and not like safetensors, else None.

    A safetensors file starts with its JSON header's length (8 bytes, little-endian) and then ``{``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return None
    if len(head) == 9 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save's format, which holds a pickle)"
    return None


def check_no_pickle(run_dir: Path) -> None:
    """Refuse a run dir whose weights are, or sit beside, a pickle: the server loads only safetensors.

    Pickle-format weight files (``pytorch_model.bin``, ``model.pt``, ``*.pkl`` ...) run code when
    loaded, so a run dir that holds one, or whose ``model.safetensors`` is really one, is an error.
    """
    weights = run_dir / ckpt.WEIGHTS
    if weights.is_file() and (kind := _pickle_kind(weights)):
        raise UserError(f"{weights}: is {kind}, not safetensors; lmforge serve loads weights only from safetensors "
                        "(pickles can run code when loaded)")
    found = sorted(p.name for p in run_dir.iterdir() if p.is_file() and
                   (p.suffix.lower() in PICKLE_SUFFIXES or (p.name != ckpt.WEIGHTS and _pickle_kind(p) == "a pickle")))
    if found:
        where = "beside" if weights.is_file() else "in place of"
        raise UserError(f"{run_dir}: holds pickle-format weights ({', '.join(found)}) {where} {ckpt.WEIGHTS}; "
                        "lmforge serve loads only safetensors: remove them (or convert them to model.safetensors)")


def load_model(run_dir: str | Path, model_id: str) -> ServedModel:
    """Check, load and classify one run dir (UserError naming the file on any problem)."""
    run_dir = loader.require_run_dir(run_dir)
    check_no_pickle(run_dir)
    cfg, model, tok = loader.load_run(run_dir, "cpu")
    if cfg.finetune.mode == "lora" and cfg.finetune.base:  # the base weights are loaded too
        check_no_pickle(loader.require_run_dir(cfg.finetune.base))
    created = int((run_dir / ckpt.WEIGHTS).stat().st_mtime)
    task = tasks.of(cfg).name
    if task == "classify":
        max_len = cfg.classifier_max_length
        return ServedModel(model_id, run_dir, "classification", cfg, model, tok, cfg.finetune.label_names, max_len, created)
    if task == "image":  # inputs are base64 images (lmforge.tools.serve.images)
        return ServedModel(model_id, run_dir, "classification", cfg, model, tok, cfg.image.label_names, 0, created,
                           images=True)
    if task == "translate":
        from lmforge.tasks.translate import source_tokenizer

        src_tok = source_tokenizer(cfg, run_dir, tok)
        return ServedModel(model_id, run_dir, "translation", cfg, model, tok, [], cfg.model.block_size, created,
                           src_tok)
    if task != "lm":
        raise UserError(f"{run_dir}: a {cfg.model.name} pretraining run has nothing to serve (completions need a GPT "
                        "language model, classify a fine-tuned classifier)")
    from lmforge.models.layers import for_decode

    for_decode(model)  # weights laid out for one-token steps, as `lmforge generate` does: same outputs, faster
    return ServedModel(model_id, run_dir, "completion", cfg, model, tok, [], cfg.model.block_size, created)


def model_ids(run_dirs: list[str]) -> list[str]:
    """Folder names, or the paths as given where folder names clash.

    >>> model_ids(["runs/tour", "runs/a/lm", "runs/b/lm/"])
    ['tour', 'runs/a/lm', 'runs/b/lm']
    """
    names = [Path(d).name or str(d) for d in run_dirs]
    ids = [name if names.count(name) == 1 else os.path.normpath(d) for d, name in zip(run_dirs, names)]
    seen: dict[str, str] = {}
    for d, i in zip(run_dirs, ids):
        key = os.path.realpath(d)
        if key in seen:
            raise UserError(f"{d}: given twice (as {seen[key]!r}); serve each run dir once")
        seen[key] = d
    if len(set(ids)) != len(ids):
        raise UserError(f"model ids clash: {', '.join(ids)}; give run dirs with distinct paths")
    return ids


def load_models(run_dirs: list[str]) -> dict[str, ServedModel]:
    if not run_dirs:
        raise UserError("serve: give at least one run directory")
    return {i: load_model(d, i) for d, i in zip(run_dirs, model_ids(run_dirs))}
