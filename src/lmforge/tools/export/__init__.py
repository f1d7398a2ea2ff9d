"""Export a run dir as ONNX or as a Hugging Face ``save_pretrained`` folder, checked number for number.

``lmforge export RUN_DIR --format onnx|hf --out DIR`` (:func:`export_run`)::

    onnx  DIR/model.onnx, tokenizer.json, config.yaml (the run's, copied), export.json
    hf    DIR/config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
          special_tokens_map.json, export.json (plus what save_pretrained adds, e.g. generation_config.json)

What each model of a run becomes (inputs and logits are int64 / float32; B and T are dynamic axes):

    run's model                 ONNX inputs -> logits                      hf class
    GPT LM                      input_ids (B, T) -> (B, T, V)              GPT2LMHeadModel
    BERT masked LM              + attention_mask (B, T) -> (B, T, V)       BertForMaskedLM (BertModel loads its encoder)
    GPT classifier, last token  input_ids, attention_mask -> (B, L)        GPT2ForSequenceClassification
    other classifiers, LSTM     input_ids, attention_mask -> (B, L)        none: a one-line UserError
    (a GPT classifier with ``cls`` pooling ignores the mask, so its graph takes input_ids only)
    cnn, resnet, vit (images)   pixels (B, C, H, W) in [0, 1] -> (B, K)    none: a one-line UserError (see .image)
    seq2seq (translation)       encoder.onnx + decoder.onnx (one step,     MarianMTModel (post-LN) or Pegasus-
                                past K / V in, present out): see .seq2seq  ForConditionalGeneration (pre-LN), for the
                                                                           layouts they express (hf.marian.not_in_marian)
    lstm_seq2seq                none yet: a one-line UserError             none: a one-line UserError

The package: this module (dispatch, GPT / BERT / classifiers), :mod:`.common` (tolerance, opset, helpers),
:mod:`.seq2seq` (translation runs).

Both formats are checked before anything appears at DIR: the exported model (onnxruntime, or
``transformers.AutoModel*.from_pretrained`` on the written folder) and the PyTorch model see the
same random inputs of two (batch, seq) shapes, right-padded rows included, and the largest
absolute logit difference must stay below :data:`TOLERANCE`. The figures go to ``export.json``.
Everything is written into a temporary folder beside DIR and renamed to DIR at the end, so a
failure leaves no half export; DIR must be new or empty. LoRA adapters are merged first.

The ONNX graph comes from torch's TorchScript exporter (``dynamo=False``, opset 17): it needs no
onnxscript and handles the LSTM's packed sequences, which the ``torch.export``-based exporter
rejects (that one matches on GPT / BERT too, given onnxscript). Models are exported unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.fileio import WriteError, temp_dir_beside
from lmforge.runs.files import CONFIG, TOKENIZER, atomic_write_text
from lmforge.runs.loader import load_run, require_run_dir
from lmforge.tools.export.common import OPSET, TOLERANCE
from lmforge.tools.export.common import native_stderr_silenced as _native_stderr_silenced
from lmforge.tools.export.common import need as _need
from lmforge.tools.export.common import write_hf_tokenizer as _write_hf_tokenizer

FORMATS = ("onnx", "hf")
HF_CLASSES = {"gpt-lm": "GPT2LMHeadModel", "bert-mlm": "BertForMaskedLM", "gpt-classifier": "GPT2ForSequenceClassification"}
_AUTO = {"gpt-lm": "AutoModelForCausalLM", "bert-mlm": "AutoModelForMaskedLM",
         "gpt-classifier": "AutoModelForSequenceClassification"}


def export_run(run_dir: str | Path, fmt: str, out: str | Path) -> dict:
    """Export ``run_dir`` to the new or empty folder ``out``; returns what ``export.json`` holds."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    run_dir, out = require_run_dir(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; export into a new or empty folder (nothing is overwritten)")
    cfg, model, tok = load_run(run_dir, verb="export")
    if getattr(getattr(cfg, "compress", None), "quantize", ""):
        raise UserError(f"{run_dir}: int8-quantized runs cannot be exported yet; export the float run it was made from")
    from lmforge.models.lora import merge_lora

    model = merge_lora(model).eval()
    kind = model_kind(model)
    if kind == "lstm-seq2seq" and fmt == "onnx":
        raise UserError(f"{run_dir}: ONNX export of an lstm_seq2seq translation model is not supported yet "
                        "(only model.name=seq2seq)")
    if fmt == "hf":
        check_hf(kind, cfg, model, tok)  # before anything is written
    made = next((p for p in reversed(out.absolute().parents) if not p.exists()), None)  # the first folder we create
    tmp = temp_dir_beside(out)
    try:
        info = _writer(fmt, kind)(tmp, run_dir, cfg, model, tok, kind)
        info = {"format": fmt, "source": str(run_dir), "model": kind, **info}
        atomic_write_text(tmp / "export.json", json.dumps(info, indent=2) + "\n")
        os.replace(tmp, out)  # out is absent or an empty folder: one rename
    except WriteError as e:  # a file of the temporary folder: name the folder the user asked for
        shutil.rmtree(made if made is not None else tmp, ignore_errors=True)
        raise WriteError(out, e.error) from None
    except OSError as e:
        shutil.rmtree(made if made is not None else tmp, ignore_errors=True)
        raise WriteError(out, e) from None
    except BaseException:
        shutil.rmtree(made if made is not None else tmp, ignore_errors=True)
        raise
    return info


def _writer(fmt: str, kind: str):
    if kind == "image":
        from lmforge.tools.export import image as export_image

        return export_image.write_onnx
    if kind == "seq2seq":
        from lmforge.tools.export import seq2seq as export_seq2seq

        return export_seq2seq.write_onnx if fmt == "onnx" else export_seq2seq.write_marian
    return _write_onnx if fmt == "onnx" else _write_hf


def model_kind(model: nn.Module) -> str:
    """gpt-lm | bert-mlm | gpt-classifier | bert-classifier | lstm-classifier | seq2seq | lstm-seq2seq | image."""
    from lmforge.models.bert import BertForMaskedLM
    from lmforge.models.classifier import SequenceClassifier
    from lmforge.models.cnn import ImageModel
    from lmforge.models.gpt import GPT
    from lmforge.models.lstm import LSTMClassifier
    from lmforge.models.rnn_seq2seq import LSTMSeq2Seq
    from lmforge.models.seq2seq import Seq2SeqTransformer

    if isinstance(model, ImageModel):
        return "image"
    if isinstance(model, Seq2SeqTransformer):
        return "seq2seq"
    if isinstance(model, LSTMSeq2Seq):
        return "lstm-seq2seq"
    if isinstance(model, GPT):
        return "gpt-lm"
    if isinstance(model, BertForMaskedLM):
        return "bert-mlm"
    if isinstance(model, SequenceClassifier):
        return ("gpt" if isinstance(model.backbone, GPT) else "bert") + "-classifier"
    if isinstance(model, LSTMClassifier):
        return "lstm-classifier"
    raise UserError(f"cannot export a {type(model).__name__}: not a model family lmforge exports")


def input_names(kind: str, model: nn.Module) -> list[str]:
    """The graph's inputs: the padding mask wherever the model reads one."""
    if kind == "gpt-lm" or (kind == "gpt-classifier" and model.pooling == "cls"):
        return ["input_ids"]
    return ["input_ids", "attention_mask"]


def check_shapes(block_size: int) -> list[tuple[int, int]]:
    """The two (batch, seq) shapes of the parity check (seq within the context length)."""
    return [(1, min(5, block_size)), (3, min(12, block_size))]


def sample_inputs(names: list[str], vocab_size: int, pad_id: int, B: int, T: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Random int64 ``input_ids`` (B, T), never ``pad_id``, and if named a right-padded ``attention_mask``
    (B, T): row 0 full, the others of random length >= 1, their padding filled with ``pad_id``."""
    ids = torch.randint(0, vocab_size, (B, T), generator=gen)
    ids[ids == pad_id] = (pad_id + 1) % vocab_size
    if "attention_mask" not in names:
        return {"input_ids": ids}
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    return {"input_ids": ids.masked_fill(mask == 0, pad_id), "attention_mask": mask}


def parity(run_export, model: nn.Module, names: list[str], cfg, pad_id: int, what: str) -> dict:
    """Compare ``run_export(inputs) -> logits`` with the PyTorch model on :func:`check_shapes`."""
    gen, worst, shapes = torch.Generator().manual_seed(0), 0.0, check_shapes(cfg.model.block_size)
    for B, T in shapes:
        feed = sample_inputs(names, cfg.model.vocab_size, pad_id, B, T, gen)
        with torch.no_grad():
            ref = _Logits(model, names)(**feed)
            got = torch.as_tensor(run_export(feed))
        diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("inf")
        if not diff < TOLERANCE:  # NaN fails too
            raise UserError(f"{what} parity check failed at (batch, seq) = ({B}, {T}): max |logit difference| {diff:.3g} "
                            f"(shapes {tuple(got.shape)} vs {tuple(ref.shape)}), expected < {TOLERANCE:g}; nothing was written")
        worst = max(worst, diff)
    return {"max_abs_diff": worst, "tolerance": TOLERANCE, "shapes_checked": [list(s) for s in shapes]}


class _Logits(nn.Module):
    """``forward(input_ids, attention_mask=None) -> logits`` for every kind (the graph the exporter traces)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.mask = model, "attention_mask" in names

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids, attention_mask) if self.mask else self.model(input_ids)


# ----------------------------------------------------------------------------- ONNX
def _write_onnx(tmp: Path, run_dir: Path, cfg, model: nn.Module, tok, kind: str) -> dict:
    onnx, ort = _need("onnx"), _need("onnxruntime")
    names, pad = input_names(kind, model), tok.pad_id if tok.pad_id is not None else 0
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if kind in ("gpt-lm", "bert-mlm") else {0: "batch"}
    example = sample_inputs(names, cfg.model.vocab_size, pad, 2, min(8, cfg.model.block_size), torch.Generator().manual_seed(1))
    path = tmp / "model.onnx"
    wrapper = _Logits(model, names).eval()
    with warnings.catch_warnings(), _native_stderr_silenced():  # TracerWarnings on shape checks, the TorchScript
        warnings.simplefilter("ignore")  # exporter's deprecation, its C++ note on the LSTM's PackPadded shapes
        try:  # TorchScript exporter: no onnxscript needed, and it handles the LSTM's packed sequences
            torch.onnx.export(wrapper, tuple(example[n] for n in names), str(path), dynamo=False, opset_version=OPSET,
                              input_names=names, output_names=["logits"], dynamic_axes=axes)
        except OSError as e:  # a full disk, a file too large: the user's --out is what could not be written
            raise WriteError(path, e) from None
        except Exception as e:  # noqa: BLE001 - report the exporter's reason in one line
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"ONNX export of the {kind} failed: {type(e).__name__}: {first}") from None
    model.eval()  # the exporter restores the wrapper's previous mode
    onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    check = parity(lambda feed: session.run(["logits"], {k: v.numpy() for k, v in feed.items()})[0],
                   model, names, cfg, pad, "ONNX (onnxruntime)")
    shutil.copyfile(run_dir / TOKENIZER, tmp / TOKENIZER)
    shutil.copyfile(run_dir / CONFIG, tmp / CONFIG)
    return {"file": "model.onnx", "inputs": names, "outputs": ["logits"], "dynamic_axes": axes, "opset": OPSET,
            "onnx_bytes": path.stat().st_size, **check, "runtime": f"onnxruntime {ort.__version__}",
            "labels": cfg.finetune.label_names, "max_sequence": cfg.model.block_size}


# ----------------------------------------------------------------------------- Hugging Face
def check_hf(kind: str, cfg, model: nn.Module, tok) -> None:
    """Raise a one-line UserError unless a ``transformers`` class computes exactly what ``model`` does."""
    from lmforge.hf.gpt2 import not_in_gpt2

    why = None
    if kind == "seq2seq":
        from lmforge.hf.marian import not_in_marian

        if why := not_in_marian(cfg.model, tok):  # "model.pos_emb: rope cannot be exported as MarianMTModel (...)"
            raise UserError(f"{why}; use --format onnx")
        return
    if kind == "image":
        why = "an image classifier of lmforge's has no Hugging Face transformers class here"
    elif kind == "lstm-seq2seq":
        why = "an LSTM encoder-decoder has no Hugging Face transformers class"
    elif kind == "lstm-classifier":
        why = "an LSTM classifier has no Hugging Face transformers class"
    elif kind == "bert-classifier":
        what = {"cls": "raw [CLS] vector", "mean": "mean of the hidden states"}.get(model.pooling, f"{model.pooling} pooling")
        why = (f"this BERT classifier reads the {what}, "
               "BertForSequenceClassification a pooler (dense + tanh) over [CLS]")
    elif kind == "gpt-classifier" and model.pooling != "last":
        why = f"finetune.pooling={model.pooling}: GPT2ForSequenceClassification reads the last non-padding token only"
    elif kind == "gpt-classifier" and tok.pad_id in (None, tok.eos_id, tok.bos_id):
        why = ("the tokenizer's pad token is also its bos / eos, so GPT2ForSequenceClassification (which finds the last "
               "token by pad_token_id) would skip the eos the classifier reads")
    elif kind in ("gpt-lm", "gpt-classifier") and (bad := not_in_gpt2(cfg.model)):
        why = f"GPT-2 has no {bad}"
    elif kind == "bert-mlm" and (cfg.model.norm_first or cfg.model.pos_emb == "rope"):
        why = "BERT has " + ("post-LN layers, not model.norm_first" if cfg.model.norm_first else
                             "position tables, not model.pos_emb=rope")
    elif getattr(cfg.model, "layer_n_head", "") or getattr(cfg.model, "layer_n_inner", ""):
        why = "per-block head counts / MLP widths (structured pruning) do not fit a GPT-2 / BERT config"
    if why:
        raise UserError(f"--format hf: cannot represent this {kind} exactly ({why}); use --format onnx")


def _write_hf(tmp: Path, run_dir: Path, cfg, model: nn.Module, tok, kind: str) -> dict:
    transformers = _need("transformers")
    from lmforge.hf.bert import bert_to_hf_state_dict, hf_bert_config
    from lmforge.hf.gpt2 import (
        gpt_classifier_to_hf_state_dict,
        gpt_to_hf_state_dict,
        hf_gpt2_config,
    )

    m, sd, pad = cfg.model, model.state_dict(), tok.pad_id if tok.pad_id is not None else 0
    special = dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=pad)
    if kind == "gpt-lm":
        hf_cfg, hf_sd = hf_gpt2_config(m, **special), gpt_to_hf_state_dict(sd, m)
    elif kind == "bert-mlm":
        hf_cfg, hf_sd = hf_bert_config(m, **special), bert_to_hf_state_dict(sd, m)
    else:
        labels = cfg.finetune.label_names
        hf_cfg = hf_gpt2_config(m, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                label2id={x: i for i, x in enumerate(labels)}, **special)
        hf_sd = gpt_classifier_to_hf_state_dict(sd, m)
    hf_model = getattr(transformers, HF_CLASSES[kind])(hf_cfg).eval()
    hf_model.load_state_dict(hf_sd)  # strict: every key of the HF class, shapes included
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars on the CLI
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        reloaded = getattr(transformers, _AUTO[kind]).from_pretrained(tmp).eval()  # what users will get
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    _write_hf_tokenizer(tmp, tok, classifier=kind == "gpt-classifier", max_length=m.block_size)
    names = input_names(kind, model)
    check = parity(lambda feed: reloaded(**feed).logits, model, names, cfg, pad, f"Hugging Face ({HF_CLASSES[kind]})")
    info = {"hf_class": HF_CLASSES[kind], "inputs": names, **check, "runtime": f"transformers {transformers.__version__}"}
    if kind == "gpt-classifier":
        info["note"] = ("the head's bias is folded into transformer.ln_f.bias (score has none): equal logits, "
                        "shifted last hidden states")
    return info
