"""Which encoder layout learns to use context from scratch, fast: a synthetic replaced-token task.

Each row is a run of consecutive ids (start, start + 1, ...); 20% of the tokens are replaced by random
ids, and a per-token head must say which. A token alone tells nothing (the prior is 80% "original");
looking at a neighbour tells everything. This is the discriminator's task in ELECTRA pretraining,
stripped to its core: how soon an encoder's attention learns to read its neighbours.

    .venv/bin/python benchmarks/encoder_layouts.py [--steps 300] [--threads 2]

Prints one JSON line: for each layout (BERT's post-LN or pre-LN x learned or rotary positions) the accuracy at
every 50 steps, and the step where it first exceeded 95% (null if never).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.models.bert import BERT, BertForMaskedLM

LAYOUTS = {"post-LN, learned (BERT)": dict(), "post-LN, rope": dict(pos_emb="rope"),
           "pre-LN, learned": dict(norm_first=True), "pre-LN, rope": dict(norm_first=True, pos_emb="rope")}


def run(layout: dict, steps: int, lr: float, V: int = 200, T: int = 64, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = ModelConfig(name="bert", vocab_size=V, block_size=T, n_layer=2, n_head=4, n_embd=128, norm_eps=1e-12, **layout)
    net = torch.nn.ModuleDict({"bert": BERT(cfg), "head": torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.GELU(),
                                                                              torch.nn.Linear(128, 1))})
    net.apply(BertForMaskedLM._init_weights)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    curve, first, t0 = {}, None, time.perf_counter()
    for step in range(1, steps + 1):
        start = torch.randint(5, V, (32, 1), generator=g)
        ids = 5 + (start - 5 + torch.arange(T)) % (V - 5)  # (32, T) runs of consecutive ids
        x = torch.where(torch.rand(ids.shape, generator=g) < 0.2, torch.randint(5, V, ids.shape, generator=g), ids)
        y = (x != ids).float()
        logits = net["head"](net["bert"](x)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        acc = ((logits > 0).float() == y).float().mean().item()
        if first is None and acc > 0.95:
            first = step
        if step % 50 == 0:
            curve[step] = round(acc, 4)
    return {"accuracy": curve, "first_step_above_95": first, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {"benchmark": "encoder_layouts", "steps": a.steps, "lr": a.lr, "threads": a.threads, "prior": 0.8,
           "layouts": {name: run(kw, a.steps, a.lr) for name, kw in LAYOUTS.items()}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
