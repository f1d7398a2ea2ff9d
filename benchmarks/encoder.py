"""Encoder inference: a MiniLM classifier at batch 32 x 128 tokens, lmforge vs transformers vs onnxruntime.

    .venv/bin/python benchmarks/encoder.py [--run runs/minilm-movies] [--threads 2]

The model is a fine-tuned lmforge run (default ``runs/minilm-movies``, made by
``lmforge finetune --config configs/sentiment-en-minilm.yaml --out runs/minilm-movies``); without
one, the registered ``minilm-l6`` encoder with a random 2-label head is timed (written to a
temporary run dir for the ONNX export) and no accuracy is reported. Every variant runs the same token ids (random, no padding) in this process, alternately,
median of ``--repeats`` runs after 2 warm-ups:

- lmforge: fp32, bf16 autocast, int8 (``lmforge compress --method int8``: per-channel int8 weights,
  per-token int8 activations, ``torch._int_mm``), and int8 + ``torch.compile`` (``--no-compile`` skips it);
- torch's own ``quantize_dynamic`` on the same model (fbgemm, per-tensor 7-bit activations);
- transformers ``BertModel`` holding the same weights (mean pooling + the same head), fp32;
- onnxruntime fp32 on lmforge's ONNX export, its own ``quantize_dynamic`` int8 of that export, and
  the registered ``minilm-l6-int8`` reference (the base encoder, int8 by onnxruntime: speed only).

With a fine-tuned run, test accuracy on its data set (``--split``) is measured for each variant.
Prints one JSON object last: seq/s per variant, accuracy, ratios; ``ratio`` is the smallest
lmforge / peer ratio (int8 vs onnxruntime int8, fp32 vs transformers fp32, int8 vs fp32 / 2).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _common import LoadMonitor, emit, machine, quiet_warnings, set_threads, timed

from lmforge.data import registry as datasets
from lmforge.runs import files as ckpt
from lmforge.runs import loader


def load_model(run: str | None):
    """(cfg, classifier, tokenizer, fine_tuned?)"""
    if run and Path(run, "model.safetensors").exists():
        cfg, model, tok = loader.load_run(run)
        return cfg, model.eval(), tok, True
    from lmforge.config import RunConfig
    from lmforge.hf import load_hf_folder
    from lmforge.models import build
    from lmforge.models.classifier import SequenceClassifier

    mcfg, sd, tok = load_hf_folder(datasets.get("minilm-l6"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlm = build(mcfg)
    mlm.load_state_dict(sd, strict=False)
    torch.manual_seed(0)
    model = SequenceClassifier(mlm.bert, mcfg.n_embd, 2, pooling="mean").eval()
    cfg = RunConfig()
    cfg.model = mcfg
    return cfg, model, tok, False


def as_run(cfg, model, tok, folder: Path) -> Path:
    """``folder`` made a run dir holding ``model`` (the random-head classifier of :func:`load_model`), so that
    lmforge's own ONNX exporter can read it as it reads a fine-tuned run."""
    from lmforge.config import save_config

    cfg = copy.deepcopy(cfg)
    cfg.finetune.labels, cfg.finetune.pooling = "negative,positive", "mean"
    folder.mkdir(parents=True)
    ckpt.atomic_write_text(folder / ckpt.CONFIG, save_config(cfg))
    tok.save(folder / ckpt.TOKENIZER)
    ckpt.save_weights(folder / ckpt.WEIGHTS, model)
    return folder


def hf_bert(cfg, model):
    """transformers.BertModel with the classifier's encoder weights; a callable (ids, mask) -> logits."""
    from transformers import BertModel

    from lmforge.hf import bert_to_hf_state_dict, hf_bert_config
    from lmforge.models.classifier import pool

    hf = BertModel(hf_bert_config(cfg.model), add_pooling_layer=False).eval()
    from lmforge.models.bert import BertForMaskedLM

    full = BertForMaskedLM(cfg.model).state_dict()  # the MLM head's keys, unused here
    full.update({f"bert.{k}": v for k, v in model.backbone.state_dict().items()})
    sd = bert_to_hf_state_dict(full, cfg.model)
    sd = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)

    def run(ids, mask):
        h = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        return model.head(model.dropout(pool(h, mask, model.pooling)))

    return run


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def accuracy(predict, tok, texts, labels, max_len: int, batch: int = 64) -> float:
    from lmforge.data.batches import collate, encode_texts

    ids = encode_texts(tok, texts, max_len)
    pad = tok.pad_id if tok.pad_id is not None else 0
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    right = 0
    for i in range(0, len(ids), batch):
        idx = order[i : i + batch]
        x, mask = collate([ids[j] for j in idx], pad)
        pred = predict(x, mask).argmax(-1).tolist()
        right += sum(int(p == labels[j]) for p, j in zip(pred, idx))
    return right / len(ids)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/minilm-movies")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--split", default="test")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="batch 2 x 16 tokens, 1 repeat, no compile, no fine-tuned "
                    "run (tests; still fetches minilm-l6 and minilm-l6-int8)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.run, args.batch, args.seq, args.repeats, args.no_compile = None, 2, 16, 1, True
    quiet_warnings()
    set_threads(args.threads)
    torch.manual_seed(0)

    from lmforge.models.quantize import _qdyn_reference, quantize_int8
    from lmforge.tools.export import export_run

    cfg, model, tok, tuned = load_model(args.run)
    int8, _ = quantize_int8(model)
    qdyn = _qdyn_reference(model)
    hf = hf_bert(cfg, model)
    ids = torch.randint(1000, cfg.model.vocab_size, (args.batch, args.seq))
    mask = torch.ones_like(ids)

    def bf16(x, m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x, m).float()

    torch_fns = {"lmforge_fp32": model, "lmforge_bf16": bf16, "lmforge_int8": int8, "torch_quantize_dynamic_int8": qdyn,
                 "transformers_fp32": hf}
    compile_s = {}
    if not args.no_compile:  # both compiled, so the int8 / fp32 ratio compares like with like
        for name, m in (("lmforge_fp32_compiled", model), ("lmforge_int8_compiled", int8)):
            t0 = time.perf_counter()
            compiled = torch.compile(copy.deepcopy(m))
            with torch.inference_mode():
                compiled(ids, mask)
            compile_s[name] = round(time.perf_counter() - t0, 1)
            torch_fns[name] = compiled

    tmp = Path(tempfile.mkdtemp(prefix="lmforge-encoder-"))
    ort_fns, ort_models = {}, {}
    from onnxruntime.quantization import QuantType, quantize_dynamic

    export_run(args.run if tuned else as_run(cfg, model, tok, tmp / "run"), "onnx", tmp / "onnx")
    quantize_dynamic(str(tmp / "onnx" / "model.onnx"), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8)
    ort_models = {"onnxruntime_fp32": tmp / "onnx" / "model.onnx", "onnxruntime_int8": tmp / "model.int8.onnx"}
    ref = datasets.get("minilm-l6-int8") / "model.onnx"
    ort_models["onnxruntime_int8_reference"] = ref
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    for name, path in ort_models.items():
        s = ort_session(path, args.threads)
        inputs = {i.name for i in s.get_inputs()}
        f = {**feed, "token_type_ids": torch.zeros_like(ids).numpy()} if "token_type_ids" in inputs else feed
        f = {k: v for k, v in f.items() if k in inputs}
        ort_fns[name] = (lambda s=s, f=f: s.run(None, f)[0])
        if name != "onnxruntime_int8_reference":
            ort_fns[name + "_predict"] = s

    fns = {k: (lambda f=f: f(ids, mask)) for k, f in torch_fns.items()}
    fns.update({k: f for k, f in ort_fns.items() if not k.endswith("_predict")})
    with torch.inference_mode(), LoadMonitor() as mon:
        sec = timed(fns, args.repeats)
    seq_s = {k: round(args.batch / v, 2) for k, v in sec.items()}

    acc = {}
    if tuned:
        from lmforge.data.labelled import load_labelled

        ft = cfg.finetune
        d = load_labelled(ft.data, args.split, ft.text_column, ft.label_column, ft.label_names)
        max_len = min(ft.max_length, cfg.model.block_size)
        with torch.inference_mode():
            for k, f in torch_fns.items():
                if not k.endswith("_compiled"):  # the same weights as the eager ones (and would recompile per shape)
                    acc[k] = round(accuracy(f, tok, d.texts, d.labels, max_len), 4)
            for k in ("onnxruntime_fp32", "onnxruntime_int8"):
                s = ort_fns[k + "_predict"]
                acc[k] = round(accuracy(lambda x, m, s=s: torch.from_numpy(s.run(None, {"input_ids": x.numpy(),
                                        "attention_mask": m.numpy()})[0]), tok, d.texts, d.labels, max_len), 4)

    best_int8 = max(seq_s["lmforge_int8"], seq_s.get("lmforge_int8_compiled", 0))
    best_fp32 = max(seq_s["lmforge_fp32"], seq_s.get("lmforge_fp32_compiled", 0))
    ratios = {
        "int8_vs_onnxruntime_int8": round(best_int8 / seq_s.get("onnxruntime_int8", seq_s["onnxruntime_int8_reference"]), 3),
        "int8_vs_onnxruntime_int8_reference": round(best_int8 / seq_s["onnxruntime_int8_reference"], 3),
        "fp32_vs_transformers_fp32": round(seq_s["lmforge_fp32"] / seq_s["transformers_fp32"], 3),
        "int8_vs_fp32": round(best_int8 / best_fp32, 3),  # best of eager / compiled for each
        "int8_vs_fp32_eager": round(seq_s["lmforge_int8"] / seq_s["lmforge_fp32"], 3),
        "int8_vs_torch_quantize_dynamic": round(best_int8 / seq_s["torch_quantize_dynamic_int8"], 3),
    }
    out = {
        "benchmark": "encoder", "model": "MiniLM-L6 classifier" + (f" ({args.run})" if tuned else " (random head)"),
        "batch": args.batch, "seq": args.seq, "seq_per_s": seq_s, "accuracy": acc,
        "accuracy_drop_int8_points": round(100 * (acc["lmforge_fp32"] - acc["lmforge_int8"]), 2) if acc else None,
        "ratios": ratios,
        "ratio": min(ratios["int8_vs_onnxruntime_int8"], ratios["fp32_vs_transformers_fp32"], ratios["int8_vs_fp32"] / 2),
        "compile_seconds": compile_s, **machine(args.threads, args.repeats), **mon.report(),
    }
    return emit(out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
