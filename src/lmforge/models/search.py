"""Decoding for encoder-decoder (translation) models: greedy, sampling and beam search, batched.

Works with any model that has the seq2seq interface: ``encode(src, src_mask)``, ``new_state(memory,
src_mask, max_len)``, ``step(tgt_new, state) -> logits (B, t, V)`` (appends to the state) and
``reorder(state, index, same_sources=False)`` (rows picked / repeated, B' may differ from B;
``same_sources``: each new row keeps its sentence, so the source side need not move), plus ``cfg.block_size`` (or
pass ``max_positions``). :class:`lmforge.models.seq2seq.Seq2SeqTransformer` and
:class:`lmforge.models.rnn_seq2seq.LSTMSeq2Seq` have it.

Length rule (fairseq's): a sentence of S source tokens gets at most ``L = min(floor(max_len_a * S +
max_len_b), max_positions - 1)`` output tokens; at step L only eos is allowed, so the decoder sees at
most ``[bos, y1, ..., yL]``, L + 1 <= max_positions positions.

Sentences are decoded in batches, longest first (less padding), and returned in input order. A
sentence that is finished leaves the batch (``reorder`` to the rows still running), so finished rows
never change and cost nothing. ``no_repeat_ngram=n`` bans, for every method, any token that would
repeat an n-gram already in the hypothesis (eos is never banned: it always ends the output).

Sampling follows :func:`lmforge.tools.generate.sample_next`: logits / temperature (below 1e-6:
greedy), then top-k, then top-p, then ``torch.multinomial`` with a private generator seeded by
``seed``. A seeded run is reproducible for the same inputs and ``batch_size``.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lmforge.errors import UserError

METHODS = ("greedy", "sample", "beam")
GREEDY_BELOW = 1e-6  # a smaller temperature decodes greedily (as in tools.generate)
MIN_TOP_P = float(torch.finfo(torch.float32).tiny)  # a smaller top_p is 0 in float32
INT_MAX = 2**31 - 1
NEG_INF = float("-inf")


def _show(value: Any) -> str:
    return reprlib.repr(value)


def _check_int(flag: str, value: Any, lo: int, hi: int = INT_MAX) -> None:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and lo <= value <= hi):
        what = f">= {lo}" if hi == INT_MAX else f"in [{lo}, {hi}]"
        raise UserError(f"{flag}: expected an integer {what}, got {_show(value)}")


def _check_float(flag: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        if lo is None:
            what = "a finite number"
        elif hi is None:
            what = f"a finite number {'>' if lo_open else '>='} {lo:g}"
        else:
            what = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise UserError(f"{flag}: expected {what}, got {_show(value)}")


@dataclass
class DecodeConfig:
    """How to decode. Each field is the CLI flag of the same name (``beam`` = ``--beam``); a bad value
    raises a one-line UserError naming the flag: ``--beam: expected an integer >= 1, got 0``."""

    method: Literal["greedy", "sample", "beam"] = "greedy"
    beam: int = 5  # hypotheses kept per sentence (method=beam)
    length_penalty: float = 1.0  # beam: a finished hypothesis scores sum(log p) / len**length_penalty (len counts eos)
    max_len_a: float = 1.5  # at most max_len_a * source_len + max_len_b output tokens (capped by the model's positions)
    max_len_b: int = 10
    no_repeat_ngram: int = 0  # ban repeating any n-gram of this size (0 = off)
    temperature: float = 1.0  # sample: logits / temperature (below 1e-6: greedy)
    top_k: int = 0  # sample: keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # sample: keep the smallest set of most likely tokens of mass >= top_p (1 = off)
    seed: int | None = None  # sample: seed of a private generator (None = torch's global RNG)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"--method: expected one of {', '.join(METHODS)}, got {_show(self.method)}")
        _check_int("--beam", self.beam, 1)
        _check_float("--length-penalty", self.length_penalty)
        _check_float("--max-len-a", self.max_len_a, 0.0)
        _check_int("--max-len-b", self.max_len_b, 0)
        _check_int("--no-repeat-ngram", self.no_repeat_ngram, 0)
        _check_float("--temperature", self.temperature, 0.0)
        _check_int("--top-k", self.top_k, 0)
        _check_float("--top-p", self.top_p, 0.0, 1.0, lo_open=True)
        if self.top_p < MIN_TOP_P:
            raise UserError(f"--top-p: expected a number in (0, 1] of at least {MIN_TOP_P:.2g} (a smaller one is 0 in "
                            f"float32), got {_show(self.top_p)}")
        if self.seed is not None:
            _check_int("--seed", self.seed, 0, 2**64 - 1)


@dataclass
class _Run:
    """What every decoding step needs besides the model and the batch."""

    cfg: DecodeConfig
    bos: int
    eos: int
    device: torch.device
    generator: torch.Generator | None


def translate_ids(model: nn.Module, src: list[list[int]], bos_id: int, eos_id: int, pad_id: int, cfg: DecodeConfig,
                  batch_size: int = 32, max_positions: int | None = None) -> list[list[int]]:
    """The output token ids of each source sentence (no bos / eos), in input order.

    ``max_positions`` caps both sides (default ``model.cfg.block_size``; a larger one must still fit the
    model's ``new_state``): a longer source is a UserError. An empty source gives an empty output
    (there is nothing to attend to). Runs under ``torch.no_grad()`` with the model in eval mode (its
    training flag is restored), on the device of the model's parameters. With method=beam,
    ``cfg.beam`` may not exceed the vocabulary (a UserError).

    >>> from lmforge.config import ModelConfig
    >>> from lmforge.models.seq2seq import Seq2SeqTransformer
    >>> m = Seq2SeqTransformer(ModelConfig(name="seq2seq", vocab_size=20, n_layer=1, n_head=2, n_embd=16, block_size=32))
    >>> src = [[5, 6, 7], [8, 9]]
    >>> greedy = translate_ids(m, src, bos_id=1, eos_id=2, pad_id=0, cfg=DecodeConfig())
    >>> greedy == translate_ids(m, src, 1, 2, 0, DecodeConfig(method="beam", beam=1, length_penalty=0.0)), len(greedy)
    (True, 2)
    """
    if not isinstance(cfg, DecodeConfig):
        raise TypeError(f"cfg must be a DecodeConfig, got {type(cfg).__name__}")
    _check_int("--batch-size", batch_size, 1)
    cap = max_positions if max_positions is not None else getattr(getattr(model, "cfg", None), "block_size", None)
    if not (isinstance(cap, numbers.Integral) and cap >= 1):
        raise ValueError(f"translate_ids needs max_positions or a model.cfg.block_size >= 1, got {cap!r}")
    seqs = [[int(t) for t in s] for s in src]
    for i, s in enumerate(seqs):
        if len(s) > cap:
            raise UserError(f"source sentence {i + 1} has {len(s)} tokens, more than the model's {cap} positions")
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    if isinstance(vocab, numbers.Integral) and vocab > 0:
        if not (0 <= bos_id < vocab and 0 <= eos_id < vocab):
            raise ValueError(f"bos_id {bos_id} and eos_id {eos_id} must be target token ids in [0, {vocab})")
        if cfg.method == "beam":
            _check_beam(cfg.beam, int(vocab))
    device = next(model.parameters()).device
    seeded = cfg.method == "sample" and cfg.seed is not None
    run = _Run(cfg, int(bos_id), int(eos_id), device, torch.Generator(device=device).manual_seed(cfg.seed) if seeded else None)
    out: list[list[int]] = [[] for _ in seqs]
    order = sorted((i for i, s in enumerate(seqs) if s), key=lambda i: -len(seqs[i]))  # longest first, stable
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                for i, hyp in zip(idx, _decode_batch(model, [seqs[i] for i in idx], int(pad_id), cap, run)):
                    out[i] = hyp
    finally:
        if was_training:
            model.train()
    return out


def _check_beam(beam: int, vocab: int) -> None:
    if beam > vocab:
        raise UserError(f"--beam {beam} is larger than the vocabulary ({vocab} tokens)")


def _decode_batch(model: nn.Module, seqs: list[list[int]], pad: int, cap: int, run: _Run) -> list[list[int]]:
    """Encode one batch of non-empty sources and decode it with ``run.cfg.method``."""
    width = max(len(s) for s in seqs)
    src = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long, device=run.device)  # (B, S)
    src_mask = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in seqs], device=run.device)  # (B, S)
    a, b = run.cfg.max_len_a, run.cfg.max_len_b
    limits = [min(math.floor(a * len(s) + b), cap - 1) for s in seqs]  # max output tokens per sentence
    memory = model.encode(src, src_mask)
    state = model.new_state(memory, src_mask, max(limits) + 1)  # the decoder sees at most [bos, y1..yL]
    if run.cfg.method == "beam":
        return _beam_search(model, state, limits, run)
    return _greedy_or_sample(model, state, limits, run)


def _restrict(logits: Tensor, hyps: Tensor, step: int, limits: Tensor, run: _Run) -> Tensor:
    """Logits (R, V) with n-gram repeats banned and everything but eos banned in rows at their length limit."""
    n, vocab = run.cfg.no_repeat_ngram, logits.size(-1)
    not_eos = torch.arange(vocab, device=logits.device) != run.eos  # (V,)
    if n and hyps.size(1) >= n:
        logits = logits.masked_fill(_ngram_ban(hyps, n, vocab) & not_eos, NEG_INF)
    at_limit = limits == step  # (R,)
    if bool(at_limit.any()):
        logits = logits.masked_fill(at_limit[:, None] & not_eos, NEG_INF)
    return logits


def _ngram_ban(hyps: Tensor, n: int, vocab: int) -> Tensor:
    """(R, V) bool: tokens that would complete an n-gram already in each row of ``hyps`` (R, T), T >= n.

    For hyps [[5, 6, 5]] and n=2 the last token 5 was once followed by 6, so 6 is banned.
    """
    windows = hyps.unfold(1, n, 1)  # (R, T-n+1, n): every n-gram so far
    last = hyps[:, hyps.size(1) - (n - 1) :]  # (R, n-1): the prefix the next token extends
    match = (windows[:, :, : n - 1] == last[:, None, :]).all(dim=-1)  # (R, T-n+1)
    rows, cols = match.nonzero(as_tuple=True)
    ban = torch.zeros(hyps.size(0), vocab, dtype=torch.bool, device=hyps.device)
    ban[rows, windows[rows, cols, n - 1]] = True
    return ban


def _pick(logits: Tensor, run: _Run) -> Tensor:
    """One token per row (R,): argmax for greedy (and cold sampling), else tools.generate's sampling rule."""
    cfg = run.cfg
    if cfg.method == "greedy" or cfg.temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature  # (R, V)
    if cfg.top_k and cfg.top_k < logits.size(-1):
        vals, order = torch.topk(logits, cfg.top_k, dim=-1)  # (R, k), sorted
    elif cfg.top_p < 1.0:
        vals, order = torch.sort(logits, dim=-1, descending=True)  # (R, V)
    else:
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=run.generator).squeeze(-1)
    if cfg.top_p < 1.0:
        probs = vals.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
        vals = vals.masked_fill(mass_before >= cfg.top_p, NEG_INF)  # the first token always stays
    choice = torch.multinomial(vals.softmax(dim=-1), 1, generator=run.generator)  # (R, 1) index into vals
    return order.gather(-1, choice).squeeze(-1)


def _greedy_or_sample(model: nn.Module, state: Any, limits: list[int], run: _Run) -> list[list[int]]:
    """One hypothesis per sentence; a row leaves the batch when it picks eos (forced at its limit)."""
    alive = list(range(len(limits)))  # the sentence of each state row
    lim = torch.tensor(limits, device=run.device)  # (A,)
    hyps = torch.empty((len(limits), 0), dtype=torch.long, device=run.device)  # (A, t) tokens so far
    tok = torch.full((len(limits), 1), run.bos, dtype=torch.long, device=run.device)  # (A, 1)
    out: list[list[int]] = [[] for _ in limits]
    for step in range(max(limits) + 1):
        logits = model.step(tok, state)[:, -1].float()  # (A, V)
        nxt = _pick(_restrict(logits, hyps, step, lim, run), run)  # (A,)
        done = nxt == run.eos
        for r in done.nonzero().flatten().tolist():
            out[alive[r]] = hyps[r].tolist()
        if bool(done.all()):
            break
        hyps = torch.cat([hyps, nxt[:, None]], dim=1)
        if bool(done.any()):
            keep = (~done).nonzero().flatten()  # (A',)
            state = model.reorder(state, keep)
            alive = [alive[r] for r in keep.tolist()]
            lim, hyps, nxt = lim[keep], hyps[keep], nxt[keep]
        tok = nxt[:, None]
    return out


def _beam_search(model: nn.Module, state: Any, limits: list[int], run: _Run) -> list[list[int]]:
    """k hypotheses per sentence in one batch of A * k rows (row a * k + j = beam j of sentence a).

    Each step: log-softmax scores of all k * V extensions of a sentence's live beams; the top 2k
    candidates in rank order; an eos among the first k ranks finishes that hypothesis (as in fairseq;
    score = sum of log-probs / len**length_penalty, len counting eos; the k best are kept); the first k
    non-eos candidates are the new live beams (``reorder`` to their parent rows). A sentence is done at
    its length limit (only eos is allowed there, so its live beams finish) or as soon as it has k
    finished hypotheses that no live one can beat (:func:`_done`, an exact bound: stopping early never
    changes the result); it then leaves the batch. The best finished hypothesis is returned.

    With beam=1 and length_penalty=0 this is exactly greedy decoding. With length_penalty > 0 a single
    beam may keep going past greedy's eos and find a longer hypothesis of better normalized score (never
    a worse one: greedy's is among the finished).
    """
    k, n_sent = run.cfg.beam, len(limits)
    state = model.reorder(state, torch.arange(n_sent, device=run.device).repeat_interleave(k))  # (A * k) rows
    scores = torch.full((n_sent, k), NEG_INF, device=run.device)  # (A, k) sum of log-probs of each live beam
    scores[:, 0] = 0.0  # all beams start as the same [bos]: only one may expand at the first step
    alive = list(range(n_sent))
    lim = torch.tensor(limits, device=run.device)  # (A,)
    hyps = torch.empty((n_sent * k, 0), dtype=torch.long, device=run.device)  # (A * k, t)
    tok = torch.full((n_sent * k, 1), run.bos, dtype=torch.long, device=run.device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in limits]  # per sentence, best first, at most k
    for step in range(max(limits) + 1):
        logp = model.step(tok, state)[:, -1].float().log_softmax(dim=-1)  # (A * k, V)
        if step == 0:
            _check_beam(k, logp.size(-1))
        logp = _restrict(logp, hyps, step, lim.repeat_interleave(k), run)
        vals, beam, token = _candidates(scores, logp, k)  # (A, 2k) each, best first
        _finish(vals, beam, token, hyps, step, [finished[s] for s in alive], run)
        scores, beam, token = _live(vals, beam, token, k, run.eos)  # (A, k) each
        best = scores[:, 0].tolist()  # the best live beam of each sentence
        keep = [a for a, s in enumerate(alive) if not _done(finished[s], best[a], step, int(lim[a]), run.cfg)]
        if not keep:
            break
        keep_t = torch.tensor(keep, dtype=torch.long, device=run.device)  # (A',)
        rows = (keep_t[:, None] * k + beam[keep_t]).flatten()  # (A' * k,) parent row of each new live beam
        state = model.reorder(state, rows, same_sources=len(keep) == len(alive))  # no sentence left: sources stay
        tok = token[keep_t].reshape(-1, 1)  # (A' * k, 1)
        hyps = torch.cat([hyps[rows], tok], dim=1)
        scores, lim = scores[keep_t], lim[keep_t]
        alive = [alive[a] for a in keep]
    return [f[0][1] if f else [] for f in finished]


def _done(finished: list[tuple[float, list[int]]], best_live: float, step: int, limit: int, cfg: DecodeConfig) -> bool:
    """A sentence is done at its length limit, or when it has k finished hypotheses and no live one can beat them.

    A live beam of score s (<= 0, it only decreases) has step + 1 tokens and finishes with a length (eos
    included) in [step + 2, limit + 1], so its best possible final score is s / len**alpha at one end.
    """
    if step >= limit or best_live == NEG_INF:
        return True
    if len(finished) < cfg.beam:
        return False
    alpha = cfg.length_penalty
    can_reach = max(best_live / float(step + 2) ** alpha, best_live / float(limit + 1) ** alpha)
    return finished[-1][0] >= can_reach


def _candidates(scores: Tensor, logp: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top min(2k, k * V) extensions of each sentence: scores, parent beam (0..k-1) and token, (A, 2k) each."""
    vocab = logp.size(-1)
    total = (scores.reshape(-1, 1) + logp).reshape(scores.size(0), k * vocab)  # (A, k * V)
    vals, flat = total.topk(min(2 * k, k * vocab), dim=-1)  # sorted, best first
    return vals, flat // vocab, flat % vocab


def _finish(vals: Tensor, beam: Tensor, token: Tensor, hyps: Tensor, step: int,
            finished: list[list[tuple[float, list[int]]]], run: _Run) -> None:
    """Add the eos candidates ranked among the first k (finite, up to k per sentence) to ``finished``."""
    k = run.cfg.beam
    hits = (token[:, :k] == run.eos) & (vals[:, :k] > NEG_INF)  # (A, k)
    penalty = float(step + 1) ** run.cfg.length_penalty  # length with eos = step + 1
    for a, j in hits.nonzero().tolist():
        norm = float(vals[a, j]) / penalty
        if len(finished[a]) < k or norm > finished[a][-1][0]:
            finished[a].append((norm, hyps[a * k + int(beam[a, j])].tolist()))
            finished[a].sort(key=lambda h: -h[0])  # stable: of equal scores the earlier stays first
            del finished[a][k:]


def _live(vals: Tensor, beam: Tensor, token: Tensor, k: int, eos: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first k non-eos candidates of each sentence in rank order (scores, parent beam, token), (A, k) each."""
    order = torch.sort((token == eos).to(torch.uint8), dim=-1, stable=True).indices[:, :k]  # non-eos first
    return vals.gather(1, order), beam.gather(1, order), token.gather(1, order)
