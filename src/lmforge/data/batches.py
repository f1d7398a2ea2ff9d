"""Batch sources for ``fit()`` and the collation they share: owned by the data, handed to the training loop.

A batch source has ``train_batch(step, index, size) -> (x, y)`` (slice ``index`` of the global batch of
optimizer step ``step``, a pure function of (seed, step), so any process draws its share without
coordination and a resumed run sees the same data), ``eval_batches()`` and ``tokens_per_sample``.

- :class:`LMBatches`: random contiguous blocks of token shards (next-token targets);
- :class:`MLMBatches`: the same blocks masked by BERT's 80/10/10 rule (:func:`mask_tokens`);
- :class:`ClassifyBatches`: labelled texts, padded by :func:`collate` after :func:`encode_texts`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from lmforge.data.shards import TokenData, iter_eval_batches, make_batch, sample_starts
from lmforge.errors import UserError
from lmforge.tokenizer import Tokenizer


def mask_tokens(
    ids: Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...] | set[int],
    generator: torch.Generator | None = None,
    prob: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: pick each non-special token with probability ``prob``; of those picked,
    80% become ``mask_id``, 10% a random token (uniform over the vocabulary, as BERT / HF do) and
    10% stay. Returns ``(inputs, labels)``: labels hold the original id where picked, -100 elsewhere
    (``cross_entropy``'s ignore_index). Special ids (pad / cls / sep ...) are never picked.

    The same ``generator`` state gives the same result (draws happen on the generator's device).

    >>> ids = torch.tensor([[101, 7, 8, 9, 102, 0]])
    >>> inputs, labels = mask_tokens(ids, 103, 200, {0, 101, 102}, torch.Generator().manual_seed(0), prob=1.0)
    >>> labels.tolist()  # every ordinary token picked, specials never
    [[-100, 7, 8, 9, -100, -100]]
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    dev = generator.device if generator is not None else ids.device
    u_pick = torch.rand(ids.shape, generator=generator, device=dev).to(ids.device)
    u_how = torch.rand(ids.shape, generator=generator, device=dev).to(ids.device)
    rand_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=dev).to(ids.device, ids.dtype)
    special = torch.isin(ids, torch.tensor(sorted(special_ids), dtype=ids.dtype, device=ids.device))
    picked = (u_pick < prob) & ~special
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    inputs = torch.where(picked & (u_how < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(picked & (u_how >= 0.8) & (u_how < 0.9), rand_ids, inputs)
    return inputs, labels


class LMBatches:
    """Random contiguous blocks of the train split; the global batch of step s is drawn from a
    generator seeded with (seed, s), and process / micro-batch ``index`` takes its slice of it."""

    def __init__(self, data: TokenData, block_size: int, global_batch: int, seed: int, eval_batches: int):
        self.data, self.block_size, self.global_batch = data, block_size, global_batch
        self.seed, self.n_eval = seed, eval_batches
        self.tokens_per_sample = block_size

    def train_batch(self, step: int, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = sample_starts(len(self.data.train), self.block_size, self.global_batch, g)
        return make_batch(self.data.train, starts[index * size : (index + 1) * size], self.block_size)

    def eval_batches(self):
        # a small text's validation split may be shorter than one block: score shorter windows then
        block = min(self.block_size, len(self.data.val) - 1)
        return iter_eval_batches(self.data.val, block, self.global_batch, self.n_eval)


class MLMBatches(LMBatches):
    """Masked-LM batches: the same random blocks, masked by BERT's 80/10/10 rule with a generator
    seeded by (seed, step) (train) or by the batch index (evaluation: the same masks every time)."""

    def __init__(self, data: TokenData, block_size: int, global_batch: int, seed: int, eval_batches: int,
                 tok: Tokenizer, mask_prob: float, form: str = "full"):
        super().__init__(data, block_size, global_batch, seed, eval_batches)
        # full: (inputs, labels (B, T)); select: ({"idx", "select"}, the picked positions' labels (N,)), for
        # BertForMaskedLM's head on those alone; rtd: ({"idx", "labels"}, labels): ElectraForPretraining's loss
        assert form in ("full", "select", "rtd"), form
        self.form = form
        if tok.mask_id is None:
            raise UserError(f"data.objective={'rtd' if form == 'rtd' else 'mlm'}: the tokenizer has no mask token (train one "
                            "with lmforge, or use a BERT vocabulary)")
        self.mask_id, self.vocab_size, self.specials, self.mask_prob = tok.mask_id, tok.vocab_size, tok.special_ids, mask_prob

    def _mask(self, x: torch.Tensor, seed: int):
        inputs, labels = mask_tokens(x, self.mask_id, self.vocab_size, self.specials, torch.Generator().manual_seed(seed),
                                     self.mask_prob)
        if self.form == "rtd":
            return {"idx": inputs, "labels": labels}, labels
        if self.form == "full":
            return inputs, labels
        picked = labels != -100
        return {"idx": inputs, "select": picked}, labels[picked]

    def train_batch(self, step: int, index: int, size: int):
        x, _ = super().train_batch(step, index, size)
        return self._mask(x, (self.seed * 1_000_003 + step) * 64 + index)

    def eval_batches(self):
        for i, (x, _) in enumerate(super().eval_batches()):
            yield self._mask(x, 10_007 + i)


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
