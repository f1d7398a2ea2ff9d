"""``classify``: sequence classification: a backbone (GPT, BERT encoder or the LSTM baseline) with a
linear head over a pooled representation, trained with cross-entropy on labelled texts.

Metrics: accuracy, macro and per-class precision / recall / F1 and the confusion matrix
(scikit-learn). A LoRA run's weights hold its adapters and head only; its base's backbone is put back
first (``needs_base``: the run loader fetches the base and hands its state dict to :meth:`rebuild`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge import tasks
from lmforge.errors import UserError


def cls_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


def build_classifier(model_cfg, ft, num_labels: int, pad_id: int) -> torch.nn.Module:
    """A freshly initialised classifier for ``model_cfg`` (backbone weights are loaded separately)."""
    from lmforge.models.bert import BERT
    from lmforge.models.classifier import SequenceClassifier
    from lmforge.models.gpt import GPT
    from lmforge.models.lstm import LSTMClassifier

    if model_cfg.name == "lstm":
        return LSTMClassifier(model_cfg.vocab_size, model_cfg.n_embd, model_cfg.n_embd, model_cfg.n_layer, num_labels,
                              model_cfg.dropout, pad_id=pad_id)
    backbone = GPT(model_cfg) if model_cfg.name == "gpt" else BERT(model_cfg)
    pooling = ft.pooling if ft.pooling != "auto" else ("last" if model_cfg.name == "gpt" else "cls")
    return SequenceClassifier(backbone, model_cfg.n_embd, num_labels, pooling, ft.head_dropout)


def pad_id(tok) -> int:
    return tok.pad_id if tok.pad_id is not None else 0


@torch.no_grad()
def predict_proba(model: torch.nn.Module, tok, texts: list[str], max_length: int, batch_size: int = 64,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Class probabilities (N, num_labels) for ``texts``, in their order (batched by length: little padding)."""
    from lmforge.data.batches import collate, encode_texts

    ids = encode_texts(tok, texts, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = []
    for i in range(0, len(ids), batch_size):
        x, mask = collate([ids[j] for j in order[i : i + batch_size]], pad_id(tok))
        out.append(model(x.to(device), mask.to(device)).float().softmax(-1).cpu())
    if not out:
        return torch.zeros(0, 0)
    probs = torch.cat(out)
    return probs[torch.argsort(torch.tensor(order))]  # back to the input order


def metrics(labels: list[int], pred: list[int], names: list[str]) -> dict:
    """Accuracy, macro and per-class precision / recall / F1 and the confusion matrix (scikit-learn) of class
    indices ``pred`` against ``labels``; shared by the text and the image classifiers."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    idx = list(range(len(names)))
    p, r, f, support = precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(labels, pred, labels=idx, average="macro", zero_division=0)
    return {"examples": len(labels), "accuracy": round(float(accuracy_score(labels, pred)), 5),
            "macro_precision": round(float(mp), 5), "macro_recall": round(float(mr), 5), "macro_f1": round(float(mf), 5),
            "per_class": {n: {"precision": round(float(p[i]), 5), "recall": round(float(r[i]), 5),
                              "f1": round(float(f[i]), 5), "support": int(support[i])} for i, n in enumerate(names)},
            "labels": names, "confusion": confusion_matrix(labels, pred, labels=idx).tolist()}


def labelled_splits(cfg, source: str):
    """(train, val) labelled sets of the run's ``finetune.data``: a registered set's own splits, or for a single
    file the stratified tenth ``finetune`` held out for validation."""
    from lmforge.data.labelled import load_labelled, stratified_split
    from lmforge.data.registry import is_registered

    ft = cfg.finetune
    if not ft.data:
        raise UserError(f"{source}: finetune.data is empty: no labelled data")
    train = load_labelled(ft.data, "train", ft.text_column, ft.label_column, ft.label_names or None, tsv_quoting=ft.tsv_quoting)
    val = (load_labelled(ft.data, "val", ft.text_column, ft.label_column, ft.label_names, tsv_quoting=ft.tsv_quoting)
           if is_registered(ft.data) else None)
    return (train, val) if val is not None else stratified_split(train, (0.9, 0.1))


class Classification(tasks.Task):
    name = "classify"
    val_accuracy = True

    def build(self, cfg, tok):
        return build_classifier(cfg.model, cfg.finetune, len(cfg.finetune.label_names), pad_id(tok))

    def batches(self, cfg, tok, data):
        """``data``: (train, val) :class:`~lmforge.data.labelled.Labelled` sets."""
        from lmforge.data.batches import ClassifyBatches, encode_texts

        train, val = data
        max_len = cfg.classifier_max_length
        return ClassifyBatches(encode_texts(tok, train.texts, max_len), train.labels, encode_texts(tok, val.texts, max_len),
                               val.labels, pad_id(tok), cfg.train.batch_size, cfg.train.seed,
                               group_by_length=cfg.finetune.group_by_length)

    def run_batches(self, cfg, run_dir, tok):
        return self.batches(cfg, tok, labelled_splits(cfg, str(run_dir)))

    def loss(self, output, target):
        return cls_loss(output, target)

    def needs_base(self, cfg) -> bool:
        return cfg.finetune.mode == "lora"

    def rebuild(self, cfg, tok, tensors, meta, source, device, base=None):
        model = self.build(cfg, tok)
        if cfg.finetune.mode != "lora":
            tasks.load_weights(cfg, model, tensors, source, device)
            return model
        from lmforge.models.lora import apply_lora, load_lora_state_dict
        from lmforge.runs.files import load_into

        if base is None:
            raise UserError(f"{source}: a LoRA run needs finetune.base or finetune.base_hf to rebuild its base model")
        model.backbone.load_state_dict(base)
        apply_lora(model, cfg.lora)
        if meta.get("lmforge") == "lora":  # adapters + head only (a finished run)
            load_lora_state_dict(model, tensors, extra=("head.*",))
        else:  # a checkpoint written mid-run holds the whole adapted model
            load_into(model, tensors, source)
        return model

    def evaluate(self, cfg, model, tok, run_dir, data, split, text_column=None, label_column=None, device="cpu",
                 **_options) -> dict:
        from lmforge.data.labelled import load_labelled

        ft = cfg.finetune
        names = ft.label_names
        d = load_labelled(data or ft.data, split, text_column or ft.text_column, label_column or ft.label_column, names,
                          tsv_quoting=ft.tsv_quoting)
        pred = predict_proba(model, tok, d.texts, cfg.classifier_max_length, device=device).argmax(-1).tolist()
        return {
            "run_dir": str(run_dir),
            "data": f"{d.source} ({split})" if (data or ft.data) and not Path(data or ft.data).exists() else d.source,
            **metrics(d.labels, pred, names),
        }

    def predict(self, cfg, model, tok, texts, device="cpu"):
        probs = predict_proba(model, tok, texts, cfg.classifier_max_length, device=device)
        names = cfg.finetune.label_names
        best = probs.max(-1)
        return [(names[i], float(pv), t) for i, pv, t in zip(best.indices.tolist(), best.values.tolist(), texts)]


tasks.register(Classification())
