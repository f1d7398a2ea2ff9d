"""Knowledge distillation: ``lmforge compress --method distill --teacher RUN_DIR --student-config FILE.yaml --out OUT``.

A new, smaller model, the *student*, is trained from scratch by :func:`lmforge.training.loop.fit` to match
the teacher's output distribution. Its shape and schedule come from an ordinary recipe: the ``model``
and ``train`` sections, for a classifier also ``finetune.pooling`` / ``head_dropout`` /
``group_by_length``, and the ``distill`` section (T, alpha, hidden_weight, init_embedding)::

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - alpha) * cross_entropy(student, hard labels)
         + hidden_weight * MSE(proj(student features), teacher features)

averaged over the scored positions: a classifier's examples, an LM's tokens (every next token; a
masked LM's masked ones). T^2 keeps the soft gradients' size independent of T (Hinton et al. 2015).
*Features* are what a model's output head reads (a classifier's pooled vector, an LM's final hidden
states); ``proj`` is a Linear layer trained with the student when the widths differ, not saved.
``distill.init_embedding`` starts the student's token embedding from the teacher's (its principal
directions when narrower): pretrained lexical knowledge that the soft targets alone pass on slowly.

Data: the teacher's. A classifier's labelled set, labels and max_length (shorter if the student's
recipe asks); an LM's token shards (its ``data/``, linked into the new run). The student reads the
teacher's tokenizer (copied in): a recipe whose ``data.tokenizer``, ``data.vocab_size`` or
``model.vocab_size`` disagrees with it is refused, as is anything else the teacher decides (its
labelled data, a language model's family and block size), before anything is written.

Teacher outputs: a classifier's are computed once per distinct training example (one pass in eval
mode, sorted by length) and looked up by token ids in each batch, cheaper than a teacher forward per
step once the student trains for more than an epoch; an LM's (B, T, V) distributions are computed for
each batch. Validation (metrics.jsonl ``val`` rows) scores the student alone on the hard labels.

The result is an ordinary run dir (``load_run``, evaluate, predict, generate, export) holding
compression.json / .md, whose ``original`` is the teacher; ``compress.source`` names the teacher and
the ``distill`` section the settings. Like every compress output it cannot be resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.devices import autocast_context, call, to_device
from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tools.compress.common import build_run, check_measure_args, check_out, link_or_copy, plain_model, training_data

DATA_FIELDS = ("data", "text_column", "label_column", "tsv_quoting", "labels")  # a classifier student's, taken from the teacher


# ----------------------------------------------------------------------------- loss
class Outputs(NamedTuple):
    """What :class:`Distiller` returns in training: the student's outputs beside the teacher's."""

    student: Tensor  # (B, K) class logits or (B, T, V) token logits
    teacher: Tensor  # the same shape
    student_hidden: Tensor | None  # (B, D) or (B, T, D): student features projected to the teacher's width D
    teacher_hidden: Tensor | None


def distill_loss(out: Outputs | Tensor, y: Tensor, temperature: float, alpha: float, hidden_weight: float = 0.0) -> Tensor:
    """The distillation loss (module docstring) over the positions where ``y != -100``; given the
    student's logits alone (evaluation), its cross-entropy on the hard labels.

    >>> s, t, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([0])
    >>> round(float(distill_loss(Outputs(s, s, None, None), y, 2.0, 1.0)), 4)  # agrees with the teacher: no soft loss
    0.0
    >>> round(float(distill_loss(Outputs(s, t, None, None), y, 2.0, 0.0)), 4) == round(float(F.cross_entropy(s, y)), 4)
    True
    """
    if isinstance(out, Tensor):
        return F.cross_entropy(out.float().reshape(-1, out.size(-1)), y.reshape(-1), ignore_index=-100)
    V = out.student.size(-1)
    s, t = out.student.float().reshape(-1, V), out.teacher.float().reshape(-1, V)  # (N, V)
    soft = y.is_floating_point()  # class probabilities (mixup / cutmix), scored everywhere, or class indices
    y = y.reshape(-1, V) if soft else y.reshape(-1)
    keep = torch.ones(len(y), dtype=torch.bool, device=y.device) if soft else y != -100
    everything = bool(keep.all())
    if not everything:  # a masked LM scores its masked tokens only
        s, t, y = s[keep], t[keep], y[keep]
    T = temperature
    soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean") * T * T
    loss = alpha * soft + (1.0 - alpha) * F.cross_entropy(s, y)
    if hidden_weight:
        D = out.teacher_hidden.size(-1)
        hs, ht = out.student_hidden.float().reshape(-1, D), out.teacher_hidden.float().reshape(-1, D)
        if not everything:
            hs, ht = hs[keep], ht[keep]
        loss = loss + hidden_weight * F.mse_loss(hs, ht)
    return loss


# ----------------------------------------------------------------------------- models
def output_head(model: nn.Module) -> nn.Module:
    """The module whose input is the model's features: a classifier's ``head``, a GPT's ``lm_head``, a BERT's ``mlm_head``."""
    for name in ("head", "lm_head", "mlm_head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise UserError(f"{type(model).__name__}: no output head (head, lm_head or mlm_head) whose input could be matched")


def with_features(model: nn.Module, x: tuple) -> tuple[Tensor, Tensor]:
    """(logits, the input of the model's output head) of ``model(*x)``."""
    seen: list[Tensor] = []
    handle = output_head(model).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        logits = model(*x)
    finally:
        handle.remove()
    return logits, seen[-1]


def token_embedding(model: nn.Module, vocab_size: int) -> nn.Embedding:
    """The model's token embedding: its first ``nn.Embedding`` of ``vocab_size`` rows (``wte``, an LSTM's ``embed``)."""
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size:
            return m
    raise UserError(f"{type(model).__name__}: no token embedding of {vocab_size} rows (distill.init_embedding)")


@torch.no_grad()
def init_embedding(student: nn.Module, teacher: nn.Module, vocab_size: int) -> None:
    """Start the student's token embedding from the teacher's, rescaled to the std of the student's own init.

    A student n dimensions wide takes the teacher's centred rows projected on their top n principal
    directions (the most variance n dimensions can keep); one at least as wide, the teacher's rows in
    its first columns. A padding row stays zero.
    """
    emb = token_embedding(student, vocab_size)
    s, t = emb.weight, token_embedding(teacher, vocab_size).weight.float()  # (V, n), (V, C)
    n, C = s.size(1), t.size(1)
    if n < C:
        t = t - t.mean(0)
        t = t @ torch.linalg.svd(t, full_matrices=False).Vh[:n].T  # (V, n) principal coordinates
    s[:, : min(n, C)] = t * (s.std() / t.std())
    if emb.padding_idx is not None:
        s[emb.padding_idx] = 0.0


class Distiller(nn.Module):
    """The model ``fit()`` trains: the student, and ``proj`` (student width -> teacher width) when hidden
    states are matched. Training inputs carry the teacher's outputs (:class:`TeacherBatches`) and give
    :class:`Outputs`; ids alone (evaluation) give the student's logits."""

    def __init__(self, student: nn.Module, proj: nn.Module | None = None) -> None:
        super().__init__()
        self.student, self.proj = student, proj

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None, teacher_logits: Tensor | None = None,
                teacher_hidden: Tensor | None = None) -> Outputs | Tensor:
        x = (idx,) if attention_mask is None else (idx, attention_mask)
        if teacher_logits is None:
            return self.student(*x)
        if teacher_hidden is None:
            return Outputs(self.student(*x), teacher_logits, None, None)
        logits, h = with_features(self.student, x)
        return Outputs(logits, teacher_logits, h if self.proj is None else self.proj(h), teacher_hidden)


class TeacherBatches:
    """A batch source for ``fit()`` (see :mod:`lmforge.training.loop`) whose training inputs carry the teacher's outputs.

    ``train_batch`` gives ``({"idx", "attention_mask" (classifiers), "teacher_logits", "teacher_hidden"
    (``hidden``)}, y)`` for ``inner``'s batch; ``eval_batches`` are ``inner``'s (the student alone).
    ``cache``: a classifier's teacher outputs are computed once for each distinct sequence of
    ``inner.ids`` and looked up by its token ids, instead of once per batch.
    """

    def __init__(self, inner, teacher: nn.Module, hidden: bool, device: torch.device, dtype: str, cache: bool,
                 progress: bool = True) -> None:
        self.inner, self.teacher, self.hidden, self.device, self.dtype = inner, teacher.to(device), hidden, device, dtype
        self.tokens_per_sample = inner.tokens_per_sample
        self.index: dict[tuple[int, ...], int] | None = None
        self.cache_seconds = 0.0
        if cache:
            self._fill(inner.ids, inner.pad_id, progress)

    @torch.no_grad()
    def _run(self, x) -> tuple[Tensor, Tensor | None]:
        x = to_device(x, self.device)
        with autocast_context(self.device, self.dtype):
            if self.hidden:
                return with_features(self.teacher, x if isinstance(x, (tuple, list)) else (x,))
            return call(self.teacher, x), None

    def _fill(self, ids: list[list[int]], pad_id: int, progress: bool, batch: int = 64) -> None:
        from tqdm.auto import tqdm

        from lmforge.data.batches import collate

        t0 = time.perf_counter()
        unique = sorted(set(map(tuple, ids)), key=len)  # similar lengths per batch: little padding
        logits, hidden = [], []
        for i in tqdm(range(0, len(unique), batch), desc="teacher", unit="batch", disable=not progress, leave=False):
            lo, h = self._run(collate([list(r) for r in unique[i : i + batch]], pad_id))
            logits.append(lo.float().cpu())
            if h is not None:
                hidden.append(h.float().cpu())
        self.logits = torch.cat(logits)  # (N, K)
        self.hidden_states = torch.cat(hidden) if hidden else None  # (N, D)
        self.index = {r: i for i, r in enumerate(unique)}
        self.cache_seconds = round(time.perf_counter() - t0, 3)

    def train_batch(self, step: int, index: int, size: int) -> tuple[dict[str, Tensor], Tensor]:
        x, y = self.inner.train_batch(step, index, size)
        ids, mask = x if isinstance(x, (tuple, list)) else (x, None)
        if self.index is not None:
            rows = torch.tensor([self.index[tuple(r[:n])] for r, n in zip(ids.tolist(), mask.sum(1).tolist())])
            logits, h = self.logits[rows], (self.hidden_states[rows] if self.hidden else None)
        else:
            logits, h = self._run(x)
        inputs = {"idx": ids, "teacher_logits": logits}
        if mask is not None:
            inputs["attention_mask"] = mask
        if h is not None:
            inputs["teacher_hidden"] = h
        return inputs, y

    def eval_batches(self):
        return self.inner.eval_batches()

    @torch.no_grad()
    def widths(self, student: nn.Module) -> tuple[int, int]:
        """(student, teacher) feature widths, from one training example."""
        x, _ = self.inner.train_batch(0, 0, 1)
        x = x if isinstance(x, (tuple, list)) else (x,)
        was = student.training
        student.eval()
        ws = with_features(student, x)[1].size(-1)
        student.train(was)
        return ws, with_features(self.teacher, to_device(x, self.device))[1].size(-1)


# ----------------------------------------------------------------------------- config
def student_config(path: str | Path, overrides: dict[str, Any], tcfg, tok, teacher: Path):
    """The student's RunConfig: the recipe at ``path`` plus ``overrides``, with the teacher's data, tokenizer and
    vocabulary. A setting that contradicts the teacher is a UserError naming it."""
    from lmforge.config import CompressSection, FinetuneConfig, load_config, load_yaml
    from lmforge.tokenizer import Tokenizer

    cfg = load_config(path, overrides)
    raw = load_yaml(path)
    given = {f"{s}.{k}" for s, values in raw.items() if isinstance(values, dict) for k in values} | set(overrides)
    where = f"--student-config {path}"
    if "data.tokenizer" in given and cfg.data.tokenizer and Tokenizer.load(cfg.data.tokenizer).sha256 != tok.sha256:
        raise UserError(f"{where}: tokenizer mismatch: data.tokenizer {cfg.data.tokenizer} is not the teacher's "
                        f"{teacher / ckpt.TOKENIZER} (a student reads the teacher's tokens; drop data.tokenizer)")
    if "data.vocab_size" in given and cfg.data.vocab_size != tok.vocab_size:
        raise UserError(f"{where}: tokenizer mismatch: data.vocab_size {cfg.data.vocab_size} but the teacher's tokenizer "
                        f"has {tok.vocab_size} tokens (the student uses the teacher's tokenizer; drop data.vocab_size)")
    if cfg.model.vocab_size and cfg.model.vocab_size != tcfg.model.vocab_size:
        raise UserError(f"{where}: tokenizer mismatch: model.vocab_size {cfg.model.vocab_size} but the teacher's is "
                        f"{tcfg.model.vocab_size} (set 0 to take the teacher's)")
    if "data.path" in given and cfg.data.path != tcfg.data.path:
        raise UserError(f"{where}: data.path {cfg.data.path!r} differs from the teacher's {tcfg.data.path!r}: "
                        "a student learns on the teacher's data (drop data.path)")
    ft = cfg.finetune
    if ft.base or ft.base_hf or ft.base_recipe or ft.mode != "full":
        raise UserError(f"{where}: a student is trained from scratch, all of it: drop finetune.base / base_hf / "
                        "base_recipe and keep finetune.mode full")
    if tcfg.finetune.labels:
        for k in DATA_FIELDS:
            if f"finetune.{k}" in given and getattr(ft, k) != getattr(tcfg.finetune, k):
                raise UserError(f"{where}: finetune.{k} {getattr(ft, k)!r} differs from the teacher's "
                                f"{getattr(tcfg.finetune, k)!r}: a student learns on the teacher's labelled data (drop it)")
        want = ft.max_length if "finetune.max_length" in given else tcfg.finetune.max_length
        limit = min(want, tcfg.classifier_max_length, *(() if cfg.model.name == "lstm" else (cfg.model.block_size,)))
        cfg.finetune = dataclasses.replace(ft, max_length=limit, **{k: getattr(tcfg.finetune, k) for k in DATA_FIELDS})
    else:
        if ft.data or ft.labels:
            raise UserError(f"{where}: finetune.data / labels are set, but the teacher {teacher} is a language model "
                            "(distill a fine-tuned classifier into a classifier)")
        if cfg.model.name != tcfg.model.name:
            raise UserError(f"{where}: model.name {cfg.model.name}: the teacher is a {tcfg.model.name} language model, "
                            f"so the student must be a {tcfg.model.name} too (the same objective)")
        if cfg.model.block_size > tcfg.model.block_size:
            raise UserError(f"{where}: model.block_size {cfg.model.block_size} exceeds the teacher's "
                            f"{tcfg.model.block_size}: the teacher could not score such windows")
        cfg.finetune = FinetuneConfig()
    cfg.model = dataclasses.replace(cfg.model, vocab_size=tcfg.model.vocab_size)
    cfg.data = dataclasses.replace(tcfg.data)
    cfg.compress = CompressSection(source=str(teacher))
    return cfg


# ----------------------------------------------------------------------------- recipe
def distill(teacher: str | Path, student_config_path: str | Path, out: str | Path, overrides: dict[str, Any] | None = None,
            data: str | None = None, split: str = "val", max_batches: int | None = None, repeats: int = 10,
            progress: bool = True) -> dict:
    """Distill the run ``teacher`` into a new student run dir ``out`` shaped by the recipe ``student_config_path``
    (+ ``overrides`` such as ``{"train.max_steps": "500"}``); returns what compression.json holds (``original``:
    the teacher). ``data`` / ``split`` / ``max_batches``: what the metric is computed on (default: validation)."""
    if not teacher or not student_config_path:
        raise UserError("--method distill takes --teacher RUN_DIR and --student-config FILE.yaml (no positional RUN_DIR)")
    check_measure_args(max_batches, repeats)
    src, out = loader.require_run_dir(teacher), Path(out)
    check_out(src, out)
    tcfg, tmodel, tok = loader.load_run(src, verb="teach")
    from lmforge.tools.compress import image

    if image.is_image(tcfg):
        cfg = image.student_config(student_config_path, overrides or {}, tcfg, src)
    else:
        cfg = student_config(student_config_path, overrides or {}, tcfg, tok, src)

    def write(tmp: Path) -> dict:
        details = _train(tmp, src, plain_model(tmodel, tcfg), tok, cfg, progress)
        return {"method": "distill", "student_config": str(student_config_path), **details}

    return build_run(src, out, write, data, split, max_batches, repeats)


def _build_student(cfg, tok) -> nn.Module:
    if cfg.finetune.labels:
        from lmforge.tasks.classify import build_classifier

        return build_classifier(cfg.model, cfg.finetune, len(cfg.finetune.label_names),
                                tok.pad_id if tok.pad_id is not None else 0)
    from lmforge.models import build

    return build(cfg.model)


def _train(tmp: Path, src: Path, teacher: nn.Module, tok, cfg, progress: bool) -> dict:
    """Write the student's run files into ``tmp`` and train it; returns what compression.json adds."""
    from lmforge.config import save_config
    from lmforge.devices import resolve_device
    from lmforge.tools.compress import image
    from lmforge.training.loop import fit

    ckpt.atomic_write_text(tmp / ckpt.CONFIG, save_config(cfg))
    images = image.is_image(cfg)
    if images:  # no tokenizer: the pixel statistics instead
        image.copy_files(src, tmp)
    else:
        shutil.copy2(src / ckpt.TOKENIZER, tmp / ckpt.TOKENIZER)
    labels, d = bool(cfg.finetune.labels), cfg.distill
    inner, _ = training_data(cfg, src, tok)
    teacher.requires_grad_(False)
    batches = TeacherBatches(inner, teacher, d.hidden_weight > 0, resolve_device(cfg.train.device), cfg.train.dtype,
                             cache=labels, progress=progress)
    torch.manual_seed(cfg.train.seed)
    student = _build_student(cfg, tok)
    if images:  # the teacher's normalisation: both read the same pixels
        student.set_stats(teacher.pixel_mean.flatten().tolist(), teacher.pixel_std.flatten().tolist())
    if d.init_embedding:
        init_embedding(student, teacher, cfg.model.vocab_size)
    proj = None
    if d.hidden_weight:
        ws, wt = batches.widths(student)
        proj = nn.Linear(ws, wt) if ws != wt else None
    loss = functools.partial(distill_loss, temperature=d.temperature, alpha=d.alpha, hidden_weight=d.hidden_weight)
    s = fit(Distiller(student, proj), batches, cfg.train, tmp, loss_fn=loss, progress=progress, val_accuracy=labels or images,
            resumable=False)  # built in a temporary folder that an interruption removes
    ckpt.save_tensors(tmp / ckpt.WEIGHTS, student.state_dict(), {"lmforge": "distilled"})  # without the projection
    (tmp / ckpt.TRAIN_STATE).unlink(missing_ok=True)  # fit()'s resume state: not part of the run
    if not labels and not images:  # `lmforge evaluate` reads an LM run's own shards
        shutil.copytree(src / "data", tmp / "data", copy_function=link_or_copy)
    m = cfg.model
    shape = image.student_shape(cfg, student) if images else {"model": m.name, "n_layer": m.n_layer, "n_embd": m.n_embd,
             **({"max_length": cfg.finetune.max_length} if labels else {}),
             **({} if m.name == "lstm" else {"block_size": m.block_size})}
    training = {k: s.get(k) for k in ("steps", "seconds", "train_loss", "val_loss", "val_accuracy") if s.get(k) is not None}
    return {"student": shape, "distill": dataclasses.asdict(d), "projection": proj is not None,
            "training": {**training, "teacher_outputs_seconds": batches.cache_seconds}}
