"""``lmforge compress``: int8 quantization, pruning or distillation of a run into a new run dir, with a trade-off report.

Distillation (:mod:`lmforge.tools.compress.distill`) trains a new, smaller student from a config; the other
methods transform the run's own model.

The output is an ordinary run dir (``config.yaml``, ``tokenizer.json``, ``model.safetensors``, and
for a language model its ``data/`` token shards, hard-linked when possible), so ``load_run`` and every
verb read it; ``config.yaml``'s ``compress`` section says what was done (``compress.quantize: int8``
makes ``load_run`` rebuild the int8 layers) and ``model.layer_n_head`` / ``layer_n_inner`` the shapes
left by structured pruning. It also holds:

- ``compression.json``: size_mb, params (stored weights; tied ones once), params_nonzero,
  latency_ms_b1 / latency_ms_b32 (one forward pass, batch 1 / 32 x ``seq_len`` tokens), throughput,
  decode_ms_per_token (GPT language models), metric (a classifier: accuracy and macro F1 on its
  validation split; an LM: validation loss and perplexity, from :mod:`lmforge.tools.evaluate`), the same
  keys under ``original`` (distill: the teacher), and ``delta`` (ratios and metric differences). Both
  models are timed in this process on the same inputs, alternately, median of ``repeats`` runs after
  2 warm-up runs.
- ``compression.md``: the same figures as a two-row Markdown table.

The folder is built under a temporary name next to ``out`` and renamed at the end: a failure (bad
arguments are checked before anything is written) leaves nothing behind.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from lmforge.errors import UserError
from lmforge.fileio import WriteError, temp_dir_beside
from lmforge.runs import files as ckpt
from lmforge.runs import loader

METHODS = ("int8", "prune")
STRUCTURES = ("heads", "neurons")


def check_measure_args(max_batches, repeats) -> None:
    """``--max-batches`` (None or >= 1) and ``--repeats`` (>= 1), as every method takes them."""
    from lmforge.config.fields import check_int
    from lmforge.tools.evaluate import check_max_batches

    check_max_batches(max_batches)
    check_int("--repeats", repeats, 1, None)


def _check_args(method, sparsity, structured, recover_steps, repeats, gradual=False, recover_lr=None,
                max_batches=None) -> None:
    from lmforge.config.fields import check_float, check_int, show

    if method not in METHODS:
        raise UserError(f"--method {method}: unknown compression method (expected one of: {', '.join(METHODS)})")
    if method == "prune":
        if not (isinstance(sparsity, (int, float)) and 0.0 < sparsity < 1.0):
            raise UserError(f"--sparsity: expected a fraction strictly between 0 and 1 for --method prune, got {show(sparsity)}")
        if structured not in (None, *STRUCTURES):
            raise UserError(f"--structured {structured}: expected one of {', '.join(STRUCTURES)}")
    elif sparsity is not None or structured or recover_steps or gradual:
        raise UserError("--sparsity, --structured, --recover-steps and --gradual apply to --method prune, not int8")
    check_int("--recover-steps", recover_steps, 0, None)
    if recover_lr is not None:
        check_float("--recover-lr", recover_lr, 0.0)
    check_measure_args(max_batches, repeats)
    if gradual and (structured or recover_steps < 2):
        raise UserError("--gradual prunes during the recovery: it needs --recover-steps of 2 or more and unstructured "
                        "pruning (no --structured)")


def _check_out(src: Path, out: Path) -> None:
    if out.resolve() == src.resolve():
        raise UserError(f"--out {out}: is the run being compressed; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists and is not an empty folder (choose a new run directory)")


def compress(run_dir: str | Path, method: str, out: str | Path, sparsity: float | None = None,
             structured: str | None = None, recover_steps: int = 0, recover_lr: float | None = None,
             gradual: bool = False, recover_distill: bool = True, data: str | None = None, split: str = "val",
             max_batches: int | None = None, repeats: int = 10, progress: bool = True) -> dict:
    """Compress the run in ``run_dir`` into the new run dir ``out``; returns what compression.json holds.

    ``method``: ``int8`` or ``prune`` (with ``sparsity`` in (0, 1), ``structured`` None | heads | neurons,
    ``recover_steps`` fine-tuning steps at peak LR ``recover_lr``, default a tenth of the run's train.lr: a LoRA
    run's adapter LR, for one, is far too high for all the weights). ``gradual``: start the recovery dense and
    prune along a cubic schedule over its first half (:class:`prune.GradualMasks`) instead of all at once.
    ``recover_distill``: the recovery learns the original model's outputs (soft targets, T=2, weight 0.9)
    beside the labels. ``data`` / ``split`` /
    ``max_batches``: what the metric is computed on (default: the run's own validation data).
    """
    _check_args(method, sparsity, structured, recover_steps, repeats, gradual, recover_lr, max_batches)
    src, out = loader.require_run_dir(run_dir), Path(out)
    _check_out(src, out)
    cfg, model, tok = loader.load_run(src, verb="compress")
    if cfg.compress.quantize:
        raise UserError(f"{src}: already {cfg.compress.quantize}-quantized; compress its source run instead "
                        f"({cfg.compress.source or 'unknown'})")
    if structured and cfg.model.name == "lstm":
        raise UserError(f"--structured {structured}: {src} is an LSTM, which has no attention heads or MLP neurons; "
                        "omit --structured for unstructured pruning")

    def write(tmp: Path) -> dict:
        return _write_run(tmp, src, cfg, model, tok, method, sparsity, structured, recover_steps, recover_lr, progress,
                          gradual, recover_distill)

    return _build(src, out, write, data, split, max_batches, repeats)


def _build(src: Path, out: Path, write, data, split, max_batches, repeats: int) -> dict:
    """``write(tmp) -> details`` fills a temporary run dir next to ``out``; measure it against ``src``, add
    compression.json / .md and rename it to ``out``. Any failure removes the temporary folder."""
    tmp = temp_dir_beside(out)
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a run dir gets the usual mode
        details = write(tmp)
        report = _measure(src, tmp, out, data, split, max_batches, repeats)
        report = {"run_dir": str(out), "source": str(src), **details, **report}
        ckpt.atomic_write_text(tmp / "compression.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        ckpt.atomic_write_text(tmp / "compression.md", markdown(report))
        try:
            os.replace(tmp, out)
        except OSError:
            if out.exists():  # checked empty at the start: another process wrote there meanwhile
                raise UserError(f"--out {out}: another process wrote there while this one ran; nothing was kept "
                                "(choose a new folder)") from None
            raise
    except (WriteError, OSError) as e:  # a file of the temporary folder: name the folder the user asked for
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(out, e.error if isinstance(e, WriteError) else e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _plain(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """A LoRA run's model with its adapters merged (same outputs, plain Linear layers)."""
    if cfg.finetune.labels and cfg.finetune.mode == "lora":
        from lmforge.models.lora import merge_lora

        merge_lora(model)
    return model


def _write_run(tmp: Path, src: Path, cfg, model, tok, method, sparsity, structured, recover_steps, recover_lr,
               progress, gradual=False, recover_distill=True) -> dict:
    """Compress ``model`` and write the run files into ``tmp``; returns what was done."""
    from lmforge.config import save_config

    new = copy.deepcopy(cfg)
    new.compress.source = str(src)
    model = _plain(model, cfg)
    if cfg.finetune.labels and cfg.finetune.mode == "lora":
        new.finetune.mode = "full"  # the adapters are merged: the run holds the whole model
    details: dict = {"method": method}
    if method == "int8":
        from lmforge.tools.compress.quantize import int8_state_dict, quantize_int8

        qmodel, tied = quantize_int8(model)
        tensors, meta = int8_state_dict(qmodel, tied), {"lmforge": "int8"}
        new.compress.quantize = "int8"
        w8 = [t for k, t in tensors.items() if k.endswith(".weight_int8")]
        q8 = [t for k, t in tensors.items() if k.endswith((".weight_int8", ".weight_scale", ".weight_zero_point"))]
        details["int8"] = {"layers": len(w8), "granularity": "per-channel",
                           "linear_weights_mb_float32": round(sum(t.numel() for t in w8) * 4 / 1e6, 4),
                           "linear_weights_mb_int8": round(sum(t.numel() * t.element_size() for t in q8) / 1e6, 4),
                           "tied_embeddings_from_int8_head": tied}
    else:
        from lmforge.tools.compress import prune

        masks, new.compress.structured = None, structured or ""
        teacher = copy.deepcopy(model) if recover_steps and recover_distill else None  # the model before pruning
        if structured:
            kept, before = prune.prune_structured(model, structured, sparsity)
            key = "layer_n_head" if structured == "heads" else "layer_n_inner"
            new.model = dataclasses.replace(new.model, **{key: ",".join(map(str, kept))})  # validated again
            new.compress.sparsity = round(1 - sum(kept) / before, 6)
            details["pruned"] = {"structured": structured, "before": before, "after": sum(kept), "per_block": kept}
        elif gradual:  # pruned while recovering: dense at step 0, the full sparsity half-way
            masks = prune.GradualMasks(model, sparsity, ramp=recover_steps // 2, every=max(1, recover_steps // 40))
        else:
            masks = prune.magnitude_masks(prune.prunable(model), sparsity)
            prune.apply_masks(model, masks)
        if recover_steps:
            lr = recover_lr if recover_lr is not None else cfg.train.lr / 10  # it starts near a trained optimum
            s = prune.recover(model, cfg, src, tok, recover_steps, lr, tmp, masks, progress, teacher=teacher)
            details["recovery"] = {"steps": recover_steps, "lr": lr, "gradual": gradual, "distill": teacher is not None,
                                   **{k: s[k] for k in ("train_loss", "val_loss", "val_accuracy", "seconds") if s.get(k) is not None}}
        if masks is not None:
            masks = masks.masks if isinstance(masks, prune.GradualMasks) else masks
            zeros, total = prune.sparsity_of(prune.prunable(model))
            new.compress.sparsity = round(zeros / total, 6)
            details["pruned"] = {"structured": None, "weights": total, "zeros": zeros, "sparsity": zeros / total,
                                 "tensors": len(masks)}
        details["sparsity"] = new.compress.sparsity
        tensors, meta = model.state_dict(), {"lmforge": "pruned"}
    ckpt.atomic_write_text(tmp / ckpt.CONFIG, save_config(new))
    shutil.copy2(src / ckpt.TOKENIZER, tmp / ckpt.TOKENIZER)
    ckpt.save_tensors(tmp / ckpt.WEIGHTS, tensors, meta)
    if not cfg.finetune.labels and (src / "data").is_dir():  # `lmforge evaluate` reads an LM run's own shards
        shutil.copytree(src / "data", tmp / "data", copy_function=_link_or_copy)
    return details


def _link_or_copy(a: str, b: str) -> None:
    try:
        os.link(a, b)  # shards are replaced, never rewritten in place: a hard link is safe
    except OSError:
        shutil.copy2(a, b)


# ----------------------------------------------------------------------------- measurement
def _file_stats(path: Path) -> dict:
    """size_mb, params (stored weights; int8 scales / zero points excluded) and params_nonzero of a weights file."""
    tensors, _ = ckpt.load_tensors(path)
    ts = [t for k, t in tensors.items() if not k.endswith((".weight_scale", ".weight_zero_point"))]
    return {"size_mb": round(path.stat().st_size / 1e6, 4), "params": sum(t.numel() for t in ts),
            "params_nonzero": sum(int(t.count_nonzero()) for t in ts)}


@torch.inference_mode()
def _median_ms(fns: list, repeats: int, warmup: int = 2) -> list[float]:
    """Median wall time (ms) of each zero-argument function, run alternately ``repeats`` times after warm-up."""
    for f in fns:
        for _ in range(warmup):
            f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for t, f in zip(times, fns):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [round(statistics.median(t) * 1e3, 3) for t in times]


def _metric(run_dir: Path, shown: Path, cfg, data, split, max_batches, heldout: Path | None) -> dict:
    """The evaluate.py figures that compression.json keeps (``shown`` replaces ``run_dir`` in the data's name)."""
    from lmforge.tools.evaluate import evaluate_run

    if heldout is not None:
        data, split = str(heldout), "val"
    r = evaluate_run(run_dir, data=data, split=split, max_batches=max_batches)
    keys = ("accuracy", "macro_f1", "examples") if cfg.finetune.labels else ("loss", "perplexity", "tokens")
    m = {k: r[k] for k in keys if k in r}
    m["data"] = r["data"].replace(str(run_dir), str(shown)) if heldout is None else \
        f"{cfg.finetune.data} (the held-out tenth that finetune validated on)"
    return m


def _write_heldout(cfg, folder: Path) -> Path | None:
    """A classifier trained on one file validated on a stratified tenth of it: write that tenth as JSONL."""
    from lmforge.data.labelled import load_labelled, stratified_split
    from lmforge.data.registry import is_registered

    ft = cfg.finetune
    if not ft.labels or not ft.data or is_registered(ft.data):
        return None
    _, val = stratified_split(load_labelled(ft.data, "train", ft.text_column, ft.label_column, ft.label_names), (0.9, 0.1))
    path = folder / "heldout.jsonl"
    path.write_text("".join(json.dumps({ft.text_column: t, ft.label_column: ft.label_names[y]}, ensure_ascii=False) + "\n"
                            for t, y in zip(val.texts, val.labels)), encoding="utf-8")
    return path


def _max_tokens(cfg) -> int:
    """The longest input a run's model takes (an LSTM has no block size: its max_length)."""
    return cfg.finetune.max_length if cfg.model.name == "lstm" else cfg.model.block_size


def _measure(src: Path, new: Path, out: Path, data, split, max_batches, repeats: int) -> dict:
    """compression.json's figures for ``new`` (to be renamed ``out``) and, under "original", for ``src``."""
    cfg, orig, tok = loader.load_run(src)
    orig = _plain(orig, cfg)
    new_cfg, comp, _ = loader.load_run(new)
    labels = bool(cfg.finetune.labels)
    T = min(128, _max_tokens(cfg), _max_tokens(new_cfg))  # a distilled student may take shorter inputs
    ids = torch.randint(0, tok.vocab_size, (32, T), generator=torch.Generator().manual_seed(0))  # (32, T)
    args = {b: (ids[:b], torch.ones_like(ids[:b])) if labels else (ids[:b],) for b in (1, 32)}
    res: dict[str, dict] = {"original": {}, "compressed": {}}
    for b in (1, 32):
        t = _median_ms([lambda m=m, x=args[b]: m(*x) for m in (orig, comp)], repeats)
        for r, ms in zip(res.values(), t):
            r[f"latency_ms_b{b}"] = ms
            if b == 32:
                r.update(throughput_seq_s_b32=round(32e3 / ms, 2), throughput_tok_s_b32=round(32e3 * T / ms, 1))
    if not labels and cfg.model.name == "gpt":
        from lmforge.tools.generate import generate

        n = max(1, min(32, cfg.model.block_size - 8, new_cfg.model.block_size - 8))
        decode = [lambda m=m: list(generate(m, list(range(8)), n, temperature=0)) for m in (orig, comp)]
        for r, ms in zip(res.values(), _median_ms(decode, max(1, repeats // 3), warmup=1)):
            r["decode_ms_per_token_b1"] = round(ms / n, 3)
    scratch = new / ".scratch"  # inside the temporary run dir, removed before it is renamed
    scratch.mkdir()
    try:
        ckpt.save_tensors(scratch / ckpt.WEIGHTS, orig.state_dict())  # the original as a standalone float32 file
        res["original"].update(_file_stats(scratch / ckpt.WEIGHTS))
        heldout = _write_heldout(cfg, scratch) if data is None else None
        res["original"]["metric"] = _metric(src, src, cfg, data, split, max_batches, heldout)
        res["compressed"]["metric"] = _metric(new, out, cfg, data, split, max_batches, heldout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res["compressed"].update(_file_stats(new / ckpt.WEIGHTS))
    o, c = res["original"], res["compressed"]
    delta = {"size_ratio": round(o["size_mb"] / c["size_mb"], 3),
             "speedup_b1": round(o["latency_ms_b1"] / c["latency_ms_b1"], 3),
             "speedup_b32": round(o["latency_ms_b32"] / c["latency_ms_b32"], 3),
             "metric": {k: round(c["metric"][k] - o["metric"][k], 5) for k in c["metric"]
                        if k in o["metric"] and isinstance(c["metric"][k], float)}}
    setup = {"seq_len": T, "repeats": repeats, "threads": torch.get_num_threads(), "torch": torch.__version__,
             "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    return {**c, "original": o, "delta": delta, "setup": setup}


def markdown(r: dict) -> str:
    """compression.md: a header and two rows (the original, the compressed run)."""
    m = r["metric"]
    names = ["accuracy", "macro_f1"] if "accuracy" in m else ["loss", "perplexity"]
    head = ["model", "size (MB)", "params (nonzero)", "latency b1 (ms)", "latency b32 (ms)", *names]
    what = r["method"] + (f" {r['pruned']['structured'] or 'unstructured'} {r['sparsity']:.2f}" if "pruned" in r else "")
    if "student" in r:  # distill: the student's shape
        what += f" {r['student']['model']} {r['student']['n_layer']}x{r['student']['n_embd']}"
    rows = []
    for label, x in ((f"original `{r['source']}`", r["original"]), (f"{what} `{r['run_dir']}`", r)):
        vals = [f"{x['metric'][k]:.4f}" if isinstance(x["metric"].get(k), float) else "-" for k in names]
        rows.append([label, f"{x['size_mb']:.3f}", f"{x['params']:,} ({x['params_nonzero']:,})",
                     f"{x['latency_ms_b1']:.2f}", f"{x['latency_ms_b32']:.2f}", *vals])
    lines = [head, ["---"] * len(head), *rows]
    return "".join("| " + " | ".join(map(str, line)) + " |\n" for line in lines)


def summary_line(r: dict) -> str:
    """One line for the CLI: size, speed and metric against the original."""
    d, m, o = r["delta"], r["metric"], r["original"]["metric"]
    k = "accuracy" if "accuracy" in m else "perplexity"
    return (f"{r['run_dir']}: {r['method']}, {r['size_mb']:.3f} MB ({d['size_ratio']:.2f}x smaller), "
            f"params {r['params']:,} ({r['params_nonzero']:,} nonzero), latency b1 {r['latency_ms_b1']:.2f} ms "
            f"({d['speedup_b1']:.2f}x), b32 {r['latency_ms_b32']:.1f} ms ({d['speedup_b32']:.2f}x), "
            f"{k} {m.get(k, math.nan):.4f} (original {o.get(k, math.nan):.4f})")
