"""Translation under one CPU time budget: lmforge's recipe vs ``transformers.MarianMTModel`` of the same size.

    .venv/bin/python benchmarks/translate.py [--budget 600] [--threads 2] [--config configs/translate-zh-en.yaml]

Both train on hsk-zh-en's train split with the same joint BPE tokenizer (the one lmforge's run trains)
and the same token-count batches (lmforge's PairBatches), for ``--budget`` seconds of training each (the
evaluations are not counted). The peer is a MarianMTModel built from a MarianConfig of the recipe's shape
(layers, width, heads, 4x MLP, dropout, shared and tied embeddings, scaled embeddings; no download),
trained with a standard recipe: AdamW (betas 0.9 / 0.98), inverse-square-root schedule after a linear
warmup, with the recipe's own peak LR, warmup steps and weight decay by default (``--peer-lr``,
``--peer-warmup``, ``--peer-weight-decay`` change them: both are post-LN, and those values were tuned for
that layout on this set, so a user would take them), label smoothing 0.1, gradient clipping 1.0, and the recipe's
``train.dtype`` (bf16 autocast for both when the recipe sets it: MarianMTModel runs ~1.2x faster with it
here, so a user tuning it would turn it on too). The peer is tuned for speed as a user would: fused AdamW
and ``--peer-attn eager`` (HF's eager attention: 1.46x the step speed of its default SDPA under bf16 here,
whose CPU backward is slow at these lengths; ``--peer-attn sdpa`` for the default).

Every ``--eval-every`` seconds of training both are scored on the test split with greedy decoding
(lmforge: its batched search; the peer: ``generate(num_beams=1)``) by sacrebleu. Reported: each one's
curve (train seconds, test BLEU), final BLEU, the seconds lmforge needs to reach the peer's final BLEU
and their ratio to the budget (target <= 0.5), and lmforge's beam-5 BLEU and sentences/s at the end.
lmforge runs in chunks of training (``lmforge train --resume`` semantics: exact); its clock is fit()'s own
training seconds, so the one-off tokenizer training and data preparation are not counted (nor are the peer's).
``--smoke``: generated pairs, tiny shapes, a few seconds.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, LoadMonitor, emit, machine, quiet_warnings, ratio, set_threads

sys.path.insert(0, str(ROOT / "tests"))  # --smoke's generated pairs


def lmforge_curve(cfg_path: str, overrides: dict, run: Path, budget: float, every: float, test, steps_per_s: float):
    """Train lmforge's recipe in chunks of about ``every`` seconds until ``budget``; (curve, final run config)."""
    from lmforge.recipes.train import train
    from lmforge.runs.loader import load_run
    from lmforge.tasks.translate import bleu_chrf, translate_texts

    curve, spent, steps = [], 0.0, 0
    while spent < budget:
        steps += max(1, round(min(every, budget - spent) * steps_per_s))
        kw = {**overrides, "train.max_steps": str(steps), "train.eval_interval": "0", "train.save_interval": str(steps)}
        if run.exists():  # continue the run: an exact resume, inverse_sqrt does not depend on max_steps
            s = train(None, kw, resume=run, progress=False)
        else:
            s = train(cfg_path, kw, out=run, progress=False)
        took = max(1e-3, s["seconds"] - spent)  # fit()'s own clock: training only (not the one-off data preparation)
        spent = s["seconds"]
        steps_per_s = max(1e-3, (steps - (curve[-1]["steps"] if curve else 0)) / took)
        cfg, model, tok = load_run(run)
        hyps = translate_texts(cfg, model, tok, tok, test.sources, beam=1)
        curve.append({"seconds": round(spent, 3), "steps": s["steps"], "bleu": bleu_chrf(hyps, test.targets)["bleu"]})
    return curve


def marian_peer(cfg, tok, batches, budget: float, every: float, test, lr: float, warmup: int, weight_decay: float,
                attn: str = "eager"):
    """The peer's curve: MarianMTModel of cfg's shape on the same batches, for ``budget`` seconds of training."""
    from transformers import MarianConfig, MarianMTModel

    from lmforge.tasks.translate import encode_side, smoothed_loss

    m, t = cfg.model, cfg.translate
    mc = MarianConfig(vocab_size=m.vocab_size, decoder_vocab_size=m.vocab_size, d_model=m.n_embd, encoder_layers=m.n_layer,
                      decoder_layers=m.n_decoder_layers, encoder_attention_heads=m.n_head, decoder_attention_heads=m.n_head,
                      encoder_ffn_dim=4 * m.n_embd, decoder_ffn_dim=4 * m.n_embd, max_position_embeddings=m.block_size,
                      dropout=m.dropout, attention_dropout=0.0, activation_dropout=0.0, activation_function="gelu",
                      scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
                      pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id,
                      decoder_start_token_id=tok.bos_id, forced_eos_token_id=tok.eos_id, attn_implementation=attn)
    torch.manual_seed(cfg.train.seed)
    model = MarianMTModel(mc)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay, fused=True)
    warmup = max(1, warmup)
    src = encode_side(tok, test.sources, m.block_size)
    bf16 = cfg.train.dtype == "bfloat16"
    curve, spent, step, next_eval = [], 0.0, 0, every
    while spent < budget:
        t0 = time.perf_counter()
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr * min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
        x, y = batches.train_batch(step, 0, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # the recipe's dtype, as a user would set it
            logits = model(input_ids=x["src"], attention_mask=x["src_mask"].long(), decoder_input_ids=x["tgt"]).logits
            loss = smoothed_loss(logits, y, t.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        spent += time.perf_counter() - t0
        if spent >= next_eval or spent >= budget:
            next_eval += every
            curve.append({"seconds": round(spent, 3), "steps": step, "bleu": peer_bleu(model, tok, src, test, m.block_size)})
    return curve


@torch.no_grad()
def peer_bleu(model, tok, src, test, block: int, batch: int = 32) -> float:
    from lmforge.data.pair_batches import collate_pairs
    from lmforge.tasks.translate import bleu_chrf

    model.eval()
    hyps = []
    for i in range(0, len(src), batch):
        x, _ = collate_pairs(src[i : i + batch], None, tok.pad_id, tok.bos_id, tok.eos_id)
        out = model.generate(input_ids=x["src"], attention_mask=x["src_mask"].long(), num_beams=1, do_sample=False,
                             max_new_tokens=min(block - 1, int(1.5 * x["src"].shape[1]) + 10))
        hyps += [tok.decode(row.tolist(), skip_special_tokens=True).strip() for row in out]
    return bleu_chrf(hyps, test.targets)["bleu"]


def reach(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first point of ``curve`` whose BLEU is at least ``target`` (None: never)."""
    return next((p["seconds"] for p in curve if p["bleu"] >= target), None)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "translate-zh-en.yaml"))
    p.add_argument("--budget", type=float, default=600.0, help="training seconds for each system (default 600)")
    p.add_argument("--eval-every", type=float, default=60.0, help="score both every N training seconds (default 60)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-lr", type=float, help="the peer's peak LR (default: the recipe's train.lr)")
    p.add_argument("--peer-warmup", type=int, help="the peer's warmup steps (default: the recipe's)")
    p.add_argument("--peer-weight-decay", type=float, help="the peer's AdamW weight decay (default: the recipe's)")
    p.add_argument("--peer-attn", choices=("eager", "sdpa"), default="eager",
                   help="the peer's attn_implementation (default eager: the faster one here)")
    p.add_argument("--smoke", action="store_true", help="generated pairs, tiny shapes, a few seconds")
    args = p.parse_args(argv)
    quiet_warnings()
    set_threads(args.threads)
    from lmforge.config import load_config
    from lmforge.tasks import translate as T

    overrides: dict = {"train.num_threads": str(args.threads), "translate.eval_sentences": "0", "train.keep_best": ""}
    work = Path(tempfile.mkdtemp(prefix="lmforge-translate-bench-"))
    if args.smoke:
        from helpers import make_pairs

        args.budget, args.eval_every = min(args.budget, 4.0), min(args.eval_every, 2.0)
        overrides.update({"translate.data": str(make_pairs(work / "pairs.tsv", n=200)), "translate.test_fraction": "0.1",
                          "translate.source_column": "zh", "translate.target_column": "en", "model.n_layer": "1",
                          "model.decoder_layers": "1", "model.n_embd": "32", "model.n_head": "2", "model.block_size": "32",
                          "data.vocab_size": "300", "translate.batch_tokens": "512", "translate.eval_sentences": "0",
                          "train.keep_best": ""})
    run = work / "lmforge"
    with LoadMonitor() as mon:
        ours = lmforge_curve(args.config, overrides, run, args.budget, args.eval_every, _test(args, overrides),
                             steps_per_s=1.0)
        cfg = load_config(str(run / "config.yaml"))
        from lmforge.tokenizer import Tokenizer

        tok = Tokenizer.load(run / "tokenizer.json")
        data = (T.run_pairs(cfg, run, "train"), T.run_pairs(cfg, run, "val"), tok)
        batches = T.Translation().batches(cfg, tok, data)
        test = T.run_pairs(cfg, run, "test")
        tr = cfg.train
        args.peer_lr = tr.lr if args.peer_lr is None else args.peer_lr
        args.peer_warmup = tr.warmup_steps if args.peer_warmup is None else args.peer_warmup
        args.peer_weight_decay = tr.weight_decay if args.peer_weight_decay is None else args.peer_weight_decay
        peer = marian_peer(cfg, tok, batches, args.budget, args.eval_every, test, args.peer_lr, args.peer_warmup,
                           args.peer_weight_decay, args.peer_attn)
        from lmforge.tools.evaluate import evaluate_run

        beam5 = evaluate_run(run, split="test", beam=5)
    target = peer[-1]["bleu"]
    t_reach = reach(ours, target)
    out = {"benchmark": "translate", "budget_s": args.budget, "lmforge": ours, "marian": peer,
           "lmforge_final_bleu": ours[-1]["bleu"], "marian_final_bleu": target,
           "lmforge_seconds_to_marian_final": t_reach,
           "ratio": ratio(t_reach, args.budget) if t_reach is not None else None,
           "lmforge_beam5_bleu": beam5["bleu"], "lmforge_beam5_sentences_per_s": beam5["sentences_per_s"],
           "test_sentences": len(test), "dtype": cfg.train.dtype, "peer_lr": args.peer_lr, "peer_warmup": args.peer_warmup,
           "peer_weight_decay": args.peer_weight_decay, "peer_attn": args.peer_attn, "work_dir": str(work),
           "ratios": {"time_to_peer_final": ratio(t_reach, args.budget) if t_reach is not None else None},
           **machine(args.threads, 1), **mon.report()}
    return emit(out)


def _test(args, overrides: dict):
    """The test split the lmforge run will hold (prepared once before the clock starts)."""
    from lmforge.config import apply_overrides, load_config
    from lmforge.data.pairs import load_pairs, split_pairs
    from lmforge.data.registry import is_registered

    t = apply_overrides(load_config(args.config), overrides).translate
    if is_registered(t.data):
        return load_pairs(t.data, "test", t.source_column, t.target_column)
    pairs = load_pairs(t.data, "train", t.source_column, t.target_column)
    return split_pairs(pairs, t.val_fraction, t.test_fraction)["test"]


if __name__ == "__main__":
    main()
