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

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.config import FinetuneConfig, ModelConfig, RunConfig, save_config
from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tokenizer import Tokenizer
from lmforge.training import distributed
from lmforge.training.loop import fit, resolve_device


def cls_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


# ----------------------------------------------------------------------------- model
def build_classifier(model_cfg: ModelConfig, ft: FinetuneConfig, num_labels: int, pad_id: int) -> torch.nn.Module:
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


def load_base(ft: FinetuneConfig) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer] | None:
    """(model config, backbone state dict, tokenizer) of the starting point, or None (from scratch)."""
    if ft.base:
        base = loader.require_run_dir(ft.base)
        cfg_base, model, tok = loader.load_run(base)
        if cfg_base.finetune.labels:  # its weights are a backbone plus a head: not what --base rebuilds
            raise UserError(f"finetune.base: {base} is a fine-tuned classifier ({', '.join(cfg_base.finetune.label_names)}); "
                            "--base takes a pretraining run (lmforge pretrain --out)")
        if cfg_base.compress.quantize:
            raise UserError(f"finetune.base: {base} is {cfg_base.compress.quantize}-quantized; fine-tune from the float run "
                            f"it came from ({cfg_base.compress.source})")
        sd = model.state_dict()
        mcfg = cfg_base.model
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


def lora_config(section):
    """The run config's ``lora`` section as a :class:`lmforge.models.lora.LoRAConfig`."""
    from lmforge.models.lora import LoRAConfig

    return LoRAConfig(rank=section.rank, alpha=section.alpha, dropout=section.dropout, targets=section.targets)


def _freeze(model: torch.nn.Module, ft: FinetuneConfig, lora_cfg) -> None:
    if ft.mode == "head":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("head.")
    elif ft.mode == "lora":
        from lmforge.models.lora import apply_lora, mark_trainable

        apply_lora(model, lora_config(lora_cfg))
        mark_trainable(model, extra=("head.*",))
    elif ft.freeze_layers:
        block = re.compile(r"(?:^|\.)h\.(\d+)\.")
        for name, p in model.named_parameters():
            if name.startswith("backbone."):
                m = block.search(name)
                if m is None and "ln_f" not in name or m is not None and int(m.group(1)) < ft.freeze_layers:
                    p.requires_grad = False


# ----------------------------------------------------------------------------- data
def encode_texts(tok: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with the tokenizer's specials ([CLS] .. [SEP], or bos .. eos); long texts keep their last id."""
    out = []
    for ids in tok.encode_batch(texts, add_special_tokens=True):
        out.append(ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:])
    return out


def collate(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the attention mask (1 = token), both (B, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class ClassifyBatches:
    """Training batches as a pure function of (seed, step), and the fixed validation batches.

    ``group_by_length``: each epoch's permutation is cut into mega-batches of 50 batches, each
    sorted by length and cut into batches, whose order is then shuffled; a batch then holds texts
    of similar length and pads little (on chn-reviews: ~2.5x fewer tokens than random batches at
    max_length 128). The last ``n % batch`` examples of an epoch's permutation wait for the next.
    """

    MEGA = 50

    def __init__(self, ids, labels, val_ids, val_labels, pad_id: int, global_batch: int, seed: int, eval_batch: int = 64,
                 group_by_length: bool = False):
        self.ids, self.labels, self.pad_id, self.global_batch, self.seed = ids, labels, pad_id, global_batch, seed
        order = sorted(range(len(val_ids)), key=lambda i: len(val_ids[i]))  # order-free metrics: pad little
        self.val_ids, self.val_labels = [val_ids[i] for i in order], [val_labels[i] for i in order]
        self.eval_batch = eval_batch
        self.group = group_by_length and len(ids) >= global_batch
        self.tokens_per_sample = max(1, round(sum(map(len, ids)) / max(1, len(ids))))

    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch: int) -> list[int]:
        return torch.randperm(len(self.ids), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()

    @functools.lru_cache(maxsize=2)
    def _grouped(self, epoch: int) -> list[list[int]]:
        perm, B = self._perm(epoch), self.global_batch
        perm = perm[: len(perm) - len(perm) % B]
        mega = B * self.MEGA
        order = [i for m in range(0, len(perm), mega) for i in sorted(perm[m : m + mega], key=lambda i: -len(self.ids[i]))]
        batches = [order[b : b + B] for b in range(0, len(order), B)]
        shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch + 104729))
        return [batches[j] for j in shuffle.tolist()]

    def _picks(self, step: int) -> list[int]:
        if self.group:
            per_epoch = len(self.ids) // self.global_batch
            return self._grouped(step // per_epoch)[step % per_epoch]
        n, first = len(self.ids), step * self.global_batch
        return [self._perm(p // n)[p % n] for p in range(first, first + self.global_batch)]

    def train_batch(self, step: int, index: int, size: int):
        picks = self._picks(step)[index * size : (index + 1) * size]
        return collate([self.ids[i] for i in picks], self.pad_id), torch.tensor([self.labels[i] for i in picks])

    def eval_batches(self):
        for i in range(0, len(self.val_ids), self.eval_batch):
            yield (collate(self.val_ids[i : i + self.eval_batch], self.pad_id),
                   torch.tensor(self.val_labels[i : i + self.eval_batch]))


# ----------------------------------------------------------------------------- recipe
def _resolve(cfg: RunConfig, run_dir: Path, resuming: bool):
    """Tokenizer, model config and (fresh-start only) backbone weights, written into the run dir."""
    from lmforge.data.labelled import load_labelled
    from lmforge.data.registry import is_registered

    ft = cfg.finetune
    base = None if resuming else load_base(ft)
    tok_path = run_dir / ckpt.TOKENIZER
    train = load_labelled(ft.data, "train", ft.text_column, ft.label_column, ft.label_names or None)
    found = sorted(set(train.labels))
    if len(found) < 2:  # it would train to predict that label and report val accuracy nan
        one = f"only the label {train.label_names[found[0]]!r}" if found else "no label"
        raise UserError(f"{train.source}: the training data has {one}; a classifier needs examples of at least two "
                        f"labels (column {ft.label_column!r})")
    if not ft.labels:
        ft.labels = ",".join(train.label_names)
    val = load_labelled(ft.data, "val", ft.text_column, ft.label_column, ft.label_names) if is_registered(ft.data) else None
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


def finetune(config_path: str | None = None, overrides: dict[str, Any] | None = None, out: str | Path | None = None,
             resume: str | Path | None = None, progress: bool = True) -> dict:
    """Start or continue a fine-tuning run; returns fit()'s summary plus the validation accuracy."""
    cfg, run_dir = loader.open_run(config_path, overrides or {}, out, resume, verb="finetune")
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
    ft = cfg.finetune
    pad_id = tok.pad_id if tok.pad_id is not None else 0
    max_len = min(ft.max_length, cfg.model.block_size) if cfg.model.name != "lstm" else ft.max_length
    ids = encode_texts(tok, train.texts, max_len)
    if val is None:  # a single file: hold out a stratified tenth for validation
        from lmforge.data.labelled import stratified_split

        train, val = stratified_split(train, (0.9, 0.1))
        ids = encode_texts(tok, train.texts, max_len)
    val_ids = encode_texts(tok, val.texts, max_len)

    torch.manual_seed(cfg.train.seed)
    model = build_classifier(cfg.model, ft, len(ft.label_names), pad_id)
    if backbone_sd is not None:
        model.backbone.load_state_dict(backbone_sd)
    _freeze(model, ft, cfg.lora)
    lr_scale = _layer_scale(cfg.model.n_layer, ft.layer_lr_decay) if ft.layer_lr_decay < 1.0 else None
    batches = ClassifyBatches(ids, train.labels, val_ids, val.labels, pad_id, cfg.train.batch_size, cfg.train.seed,
                              group_by_length=ft.group_by_length)
    summary = fit(model, batches, cfg.train, run_dir, loss_fn=cls_loss, info=info, progress=progress, lr_scale=lr_scale,
                  val_accuracy=True, on_restored=record if resuming else None)
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
