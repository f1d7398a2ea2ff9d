"""What every compression method shares: the checks on ``--out`` and the measuring flags, building the new run
in a temporary folder and renaming it into place, timing both models alternately, the metric, the report
(compression.json / .md and the summary line), and the data a run was trained on (for a recovery or a
student)."""

from __future__ import annotations

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


def training_data(cfg, src: Path, tok):
    """(batch source, loss) the run was trained with: its task's, on the run's own data."""
    from lmforge import tasks

    task = tasks.of(cfg)
    return task.run_batches(cfg, src, tok), task.loss_for(cfg)


def check_measure_args(max_batches, repeats) -> None:
    """``--max-batches`` (None or >= 1) and ``--repeats`` (>= 1), as every method takes them."""
    from lmforge.config.fields import check_int
    from lmforge.tools.evaluate import check_max_batches

    check_max_batches(max_batches)
    check_int("--repeats", repeats, 1, None)


def check_out(src: Path, out: Path) -> None:
    if out.resolve() == src.resolve():
        raise UserError(f"--out {out}: is the run being compressed; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists and is not an empty folder (choose a new run directory)")


def build_run(src: Path, out: Path, write, data, split, max_batches, repeats: int) -> dict:
    """``write(tmp) -> details`` fills a temporary run dir next to ``out``; measure it against ``src``, add
    compression.json / .md and rename it to ``out``. Any failure removes the temporary folder."""
    tmp = temp_dir_beside(out)
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a run dir gets the usual mode
        details = write(tmp)
        report = measure(src, tmp, out, data, split, max_batches, repeats)
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


def plain_model(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """A LoRA run's model with its adapters merged (same outputs, plain Linear layers)."""
    if cfg.finetune.labels and cfg.finetune.mode == "lora":
        from lmforge.models.lora import merge_lora

        merge_lora(model)
    return model


def link_or_copy(a: str, b: str) -> None:
    try:
        os.link(a, b)  # shards are replaced, never rewritten in place: a hard link is safe
    except OSError:
        shutil.copy2(a, b)


def file_stats(path: Path) -> dict:
    """size_mb, params (stored weights; int8 scales / zero points excluded) and params_nonzero of a weights file."""
    tensors, _ = ckpt.load_tensors(path)
    ts = [t for k, t in tensors.items() if not k.endswith((".weight_scale", ".weight_zero_point"))]
    return {"size_mb": round(path.stat().st_size / 1e6, 4), "params": sum(t.numel() for t in ts),
            "params_nonzero": sum(int(t.count_nonzero()) for t in ts)}


@torch.inference_mode()
def median_ms(fns: list, repeats: int, warmup: int = 2) -> list[float]:
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


def metric(run_dir: Path, shown: Path, cfg, data, split, max_batches, heldout: Path | None) -> dict:
    """The evaluate.py figures that compression.json keeps (``shown`` replaces ``run_dir`` in the data's name)."""
    from lmforge.tools.evaluate import evaluate_run

    if heldout is not None:
        data, split = str(heldout), "val"
    from lmforge.tools.compress.image import is_image
    from lmforge.tools.compress.translation import METRIC_KEYS, is_translation

    r = evaluate_run(run_dir, data=data, split=split, max_batches=max_batches)
    keys = ("accuracy", "macro_f1", "examples") if cfg.finetune.labels or is_image(cfg) else \
        METRIC_KEYS if is_translation(cfg) else ("loss", "perplexity", "tokens")
    m = {k: r[k] for k in keys if k in r}
    m["data"] = r["data"].replace(str(run_dir), str(shown)) if heldout is None else \
        f"{cfg.finetune.data} (the held-out tenth that finetune validated on)"
    return m


def write_heldout(cfg, folder: Path) -> Path | None:
    """A classifier trained on one file validated on a stratified tenth of it: write that tenth as JSONL."""
    from lmforge.data.labelled import load_labelled, stratified_split
    from lmforge.data.registry import is_registered

    ft = cfg.finetune
    if not ft.labels or not ft.data or is_registered(ft.data):
        return None
    data = load_labelled(ft.data, "train", ft.text_column, ft.label_column, ft.label_names, tsv_quoting=ft.tsv_quoting)
    _, val = stratified_split(data, (0.9, 0.1))
    path = folder / "heldout.jsonl"
    path.write_text("".join(json.dumps({ft.text_column: t, ft.label_column: ft.label_names[y]}, ensure_ascii=False) + "\n"
                            for t, y in zip(val.texts, val.labels)), encoding="utf-8")
    return path


def max_tokens(cfg) -> int:
    """The longest input a run's model takes (an LSTM has no block size: its max_length)."""
    return cfg.finetune.max_length if cfg.model.name == "lstm" else cfg.model.block_size


def measure(src: Path, new: Path, out: Path, data, split, max_batches, repeats: int) -> dict:
    """compression.json's figures for ``new`` (to be renamed ``out``) and, under "original", for ``src``."""
    cfg, orig, tok = loader.load_run(src)
    orig = plain_model(orig, cfg)
    new_cfg, comp, _ = loader.load_run(new)
    from lmforge.tools.compress import image, translation

    labels, seq2seq, images = bool(cfg.finetune.labels), translation.is_translation(cfg), image.is_image(cfg)
    big = image.BATCH if images else 32
    if images:
        T, args, kwargs = 0, image.forward_args(cfg), {1: {}, big: {}}
    else:
        T = min(128, max_tokens(cfg), max_tokens(new_cfg))  # a distilled student may take shorter inputs
        ids = torch.randint(0, tok.vocab_size, (32, T), generator=torch.Generator().manual_seed(0))  # (32, T)
        args = {b: (ids[:b], torch.ones_like(ids[:b])) if labels else (ids[:b],) for b in (1, 32)}
        kwargs = translation.forward_args(tok, T) if seq2seq else {1: {}, 32: {}}
    if seq2seq:
        args = {1: (), 32: ()}
    res: dict[str, dict] = {"original": {}, "compressed": {}}
    for b in (1, big):
        t = median_ms([lambda m=m, x=args[b], kw=kwargs[b]: m(*x, **kw) for m in (orig, comp)], repeats)
        for r, ms in zip(res.values(), t):
            r[f"latency_ms_b{b}"] = ms
            if b == big and images:
                r[f"throughput_img_s_b{big}"] = round(big * 1e3 / ms, 1)
            elif b == 32:
                r.update(throughput_seq_s_b32=round(32e3 / ms, 2), throughput_tok_s_b32=round(32e3 * T / ms, 1))
    if not labels and cfg.model.name == "gpt":
        from lmforge.tools.generate import generate

        n = max(1, min(32, cfg.model.block_size - 8, new_cfg.model.block_size - 8))
        decode = [lambda m=m: list(generate(m, list(range(8)), n, temperature=0)) for m in (orig, comp)]
        for r, ms in zip(res.values(), median_ms(decode, max(1, repeats // 3), warmup=1)):
            r["decode_ms_per_token_b1"] = round(ms / n, 3)
    if seq2seq:
        translation.decode_figures(src, cfg, tok, orig, comp, repeats, res, median_ms)
    scratch = new / ".scratch"  # inside the temporary run dir, removed before it is renamed
    scratch.mkdir()
    try:
        ckpt.save_tensors(scratch / ckpt.WEIGHTS, orig.state_dict())  # the original as a standalone float32 file
        res["original"].update(file_stats(scratch / ckpt.WEIGHTS))
        heldout = write_heldout(cfg, scratch) if data is None else None
        res["original"]["metric"] = metric(src, src, cfg, data, split, max_batches, heldout)
        res["compressed"]["metric"] = metric(new, out, cfg, data, split, max_batches, heldout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res["compressed"].update(file_stats(new / ckpt.WEIGHTS))
    o, c = res["original"], res["compressed"]
    delta = {"size_ratio": round(o["size_mb"] / c["size_mb"], 3),
             "speedup_b1": round(o["latency_ms_b1"] / c["latency_ms_b1"], 3),
             f"speedup_b{big}": round(o[f"latency_ms_b{big}"] / c[f"latency_ms_b{big}"], 3),
             "metric": {k: round(c["metric"][k] - o["metric"][k], 5) for k in c["metric"]
                        if k in o["metric"] and isinstance(c["metric"][k], float)}}
    shape = {"image_shape": list(args[big][0].shape[1:])} if images else {"seq_len": T}
    setup = {**shape, "batch": big, "repeats": repeats, "threads": torch.get_num_threads(), "torch": torch.__version__,
             "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    return {**c, "original": o, "delta": delta, "setup": setup}


def markdown(r: dict) -> str:
    """compression.md: a header and two rows (the original, the compressed run)."""
    m = r["metric"]
    names = ["accuracy", "macro_f1"] if "accuracy" in m else ["bleu", "chrf", "loss"] if "bleu" in m else ["loss", "perplexity"]
    big = r.get("setup", {}).get("batch", 32)
    head = ["model", "size (MB)", "params (nonzero)", "latency b1 (ms)", f"latency b{big} (ms)", *names]
    what = r["method"] + (f" {r['pruned']['structured'] or 'unstructured'} {r['sparsity']:.2f}" if "pruned" in r else "")
    if "student" in r:  # distill: the student's shape
        what += f" {r['student']['model']} {r['student']['n_layer']}x{r['student']['n_embd']}"
    rows = []
    for label, x in ((f"original `{r['source']}`", r["original"]), (f"{what} `{r['run_dir']}`", r)):
        vals = [f"{x['metric'][k]:.4f}" if isinstance(x["metric"].get(k), float) else "-" for k in names]
        rows.append([label, f"{x['size_mb']:.3f}", f"{x['params']:,} ({x['params_nonzero']:,})",
                     f"{x['latency_ms_b1']:.2f}", f"{x[f'latency_ms_b{big}']:.2f}", *vals])
    lines = [head, ["---"] * len(head), *rows]
    return "".join("| " + " | ".join(map(str, line)) + " |\n" for line in lines)


def summary_line(r: dict) -> str:
    """One line for the CLI: size, speed and metric against the original."""
    d, m, o, big = r["delta"], r["metric"], r["original"]["metric"], r.get("setup", {}).get("batch", 32)
    k = "accuracy" if "accuracy" in m else "bleu" if "bleu" in m else "perplexity"
    return (f"{r['run_dir']}: {r['method']}, {r['size_mb']:.3f} MB ({d['size_ratio']:.2f}x smaller), "
            f"params {r['params']:,} ({r['params_nonzero']:,} nonzero), latency b1 {r['latency_ms_b1']:.2f} ms "
            f"({d['speedup_b1']:.2f}x), b{big} {r[f'latency_ms_b{big}']:.1f} ms ({d[f'speedup_b{big}']:.2f}x), "
            f"{k} {m.get(k, math.nan):.4f} (original {o.get(k, math.nan):.4f})")
