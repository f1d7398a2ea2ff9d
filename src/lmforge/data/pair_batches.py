"""Batches of encoded sentence pairs for an encoder-decoder model, as a pure function of (seed, step).

A pair is (source ids, target ids) without special tokens. A batch is ``x = {"src", "src_mask", "tgt"}``
and ``y``: ``tgt`` is ``[bos] + target`` and ``y`` is ``target + [eos]`` (the next token at every
position), right-padded; padded targets are -100 (ignored by the loss).

Two ways to fill an optimizer step:

- ``batch_tokens == 0``: ``global_batch`` pairs drawn from the epoch's permutation, as ClassifyBatches does;
- ``batch_tokens > 0`` (fairseq's ``--max-tokens``): the pairs sorted by length (ties shuffled by the
  seed) and cut into batches whose padded size (rows x longest side, both sides counted) stays within
  ``batch_tokens``; each epoch visits those batches in a seeded random order. Pairs of similar length
  share a batch, so little is padding.

Either way a step's global batch depends on (seed, step) only: a resumed run sees the same data. Under
DDP / gradient accumulation, share ``index`` of ``shares`` takes every ``shares``-th row.

>>> b = PairBatches([[5, 6], [7]], [[8], [9, 10]], [[5]], [[8]], pad_id=0, bos_id=1, eos_id=2, global_batch=2, seed=0)
>>> x, y = b.train_batch(0, 0, 2)
>>> x["tgt"].shape, y.shape, int((y != -100).sum())
(torch.Size([2, 3]), torch.Size([2, 3]), 5)
"""

from __future__ import annotations

import functools

import torch

IGNORE = -100  # target positions the loss skips (padding)


def collate_pairs(src: list[list[int]], tgt: list[list[int]] | None, pad_id: int, bos_id: int, eos_id: int):
    """(x, y) of a list of pairs; ``tgt`` None gives the encoder inputs only (x without ``tgt``, y None)."""
    S = max(1, max(map(len, src), default=1))
    src_t = torch.full((len(src), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(src), S), dtype=torch.bool)
    for i, s in enumerate(src):
        src_t[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    x = {"src": src_t, "src_mask": mask}
    if tgt is None:
        return x, None
    T = max(map(len, tgt), default=0) + 1
    tgt_t = torch.full((len(tgt), T), pad_id, dtype=torch.long)
    y = torch.full((len(tgt), T), IGNORE, dtype=torch.long)
    for i, t in enumerate(tgt):
        tgt_t[i, : len(t) + 1] = torch.tensor([bos_id, *t], dtype=torch.long)
        y[i, : len(t) + 1] = torch.tensor([*t, eos_id], dtype=torch.long)
    x["tgt"] = tgt_t
    return x, y


class PairBatches:
    """Training batches of pairs as a pure function of (seed, step), and the fixed validation batches."""

    def __init__(self, src, tgt, val_src, val_tgt, pad_id: int, bos_id: int, eos_id: int, global_batch: int, seed: int,
                 batch_tokens: int = 0, eval_batch: int = 64):
        self.src, self.tgt, self.pad_id, self.bos_id, self.eos_id = src, tgt, pad_id, bos_id, eos_id
        self.global_batch, self.seed, self.batch_tokens, self.eval_batch = global_batch, seed, batch_tokens, eval_batch
        order = sorted(range(len(val_src)), key=lambda i: (len(val_src[i]), len(val_tgt[i])))  # pad little
        self.val_src, self.val_tgt = [val_src[i] for i in order], [val_tgt[i] for i in order]
        lengths = [len(s) + len(t) + 1 for s, t in zip(src, tgt)]
        self.tokens_per_sample = max(1, round(sum(lengths) / max(1, len(lengths))))
        self.buckets = self._buckets() if batch_tokens else None
        if self.buckets:  # fit() counts tokens_per_sample * global_batch per step: a bucket's mean tokens in all
            self.tokens_per_sample = max(1, round(sum(lengths) / len(self.buckets) / global_batch))

    def _buckets(self) -> list[list[int]]:
        """The pairs sorted by (source, target) length, ties in a seeded order, cut into batches of at most
        ``batch_tokens`` padded tokens (a pair longer than that alone is a batch of one)."""
        ties = torch.randperm(len(self.src), generator=torch.Generator().manual_seed(self.seed * 7919 + 31)).tolist()
        order = sorted(range(len(self.src)), key=lambda i: (len(self.src[i]), len(self.tgt[i]) + 1, ties[i]))
        out, cur, longest = [], [], 0
        for i in order:
            n = max(len(self.src[i]), len(self.tgt[i]) + 1)
            if cur and 2 * max(longest, n) * (len(cur) + 1) > self.batch_tokens:
                out.append(cur)
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, n)
        return out + ([cur] if cur else [])

    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch: int, n: int) -> list[int]:
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()

    def picks(self, step: int) -> list[int]:
        """The pair indices of optimizer step ``step``'s global batch."""
        if self.buckets is not None:
            nb = len(self.buckets)
            return self.buckets[self._perm(step // nb, nb)[step % nb]]
        n, first = len(self.src), step * self.global_batch
        return [self._perm(p // n, n)[p % n] for p in range(first, first + self.global_batch)]

    def train_batch(self, step: int, index: int, size: int):
        picks = self.picks(step)
        if self.buckets is not None:  # a token batch's rows are dealt to the shares of the step
            shares = max(1, self.global_batch // size)
            picks = picks[index::shares] or picks[:1]
        else:
            picks = picks[index * size : (index + 1) * size]
        return collate_pairs([self.src[i] for i in picks], [self.tgt[i] for i in picks], self.pad_id, self.bos_id,
                             self.eos_id)

    def eval_batches(self):
        for i in range(0, len(self.val_src), self.eval_batch):
            yield collate_pairs(self.val_src[i : i + self.eval_batch], self.val_tgt[i : i + self.eval_batch], self.pad_id,
                                self.bos_id, self.eos_id)
