"""Sampling: temperature, top-k, top-p; prefill + static-KV-cache decode; streaming text.

``generate`` is lazy: each ``next()`` runs one model step (prefill first, then one token per step)
and yields the new token id. Model steps run under ``torch.inference_mode()`` (entered and left
around each step, never held across a ``yield``, so the caller's code between tokens runs with its
own grad mode) and with the model in eval mode (restored afterwards if it was training).

Context cropping: when prompt + generated tokens no longer fit in ``block_size``, the model sees only
the last ``block_size`` tokens, as in the full-recompute reference (``use_cache=False``). Positions
then shift every step, so cached keys are stale: from that step on the cache is dropped and each step
recomputes the cropped window. The cached and uncached paths therefore give identical tokens.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterable, Iterator
from typing import Protocol

import torch
from torch import Tensor, nn

MIN_TOP_P = float(torch.finfo(torch.float32).tiny)  # a smaller top_p rounds to 0 in float32 (~1.2e-38)
GREEDY_BELOW = 1e-6  # a smaller temperature samples greedily: dividing by it could overflow float32 (inf, nan)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and not (isinstance(top_k, numbers.Integral) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 or None = off), got {top_k}")
    if top_p is not None and not (isinstance(top_p, numbers.Real) and MIN_TOP_P <= top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] and at least {MIN_TOP_P:.2g} (float32 rounds less to 0), got {top_p}")


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row (LongTensor (B,)) from next-token logits (B, V).

    ``temperature == 0`` is greedy (argmax), and so is any temperature below ``GREEDY_BELOW`` (1e-6: the
    distribution is one-hot to within float32 precision there, and dividing by it could overflow).
    Otherwise logits are divided by ``temperature``, then
    ``top_k`` keeps exactly the k largest (None or 0: off; ties as torch.topk breaks them), then ``top_p`` keeps the smallest set of most
    likely tokens whose probability sums to at least ``top_p`` (None or 1.0: off; the most likely
    token is always kept), then one token is drawn with ``torch.multinomial(generator=generator)``.

    For probabilities [0.5, 0.3, 0.15, 0.05], top_p=0.7 keeps the first two (0.5 < 0.7 <= 0.8) and
    top_p=0.4 keeps only the first.
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature  # (B, V)
    if not top_k or top_k >= logits.size(-1):
        if top_p is None or top_p >= 1.0:
            return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)  # (B,)
        vals, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    else:
        vals, order = torch.topk(logits, top_k, dim=-1)  # (B, k), sorted: top-p then only sorts k values
    if top_p is not None and top_p < 1.0:
        probs = vals.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
        vals = vals.masked_fill(mass_before >= top_p, float("-inf"))  # the first token always stays
    choice = torch.multinomial(vals.softmax(dim=-1), 1, generator=generator)  # (B, 1) index into vals
    return order.gather(-1, choice).squeeze(-1)  # (B,)


@contextlib.contextmanager
def _model_step(model: nn.Module) -> Iterator[None]:
    """inference_mode + eval mode for one model step, restoring the training flag afterwards."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def generate(
    model: nn.Module,
    prompt_ids: list[int] | Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids (batch 1), one per model step.

    Stops after ``max_new_tokens`` or when ``eos_id`` is sampled; the eos token itself is NOT yielded.
    ``seed`` makes sampling reproducible (a private ``torch.Generator``; None uses torch's global RNG).
    ``use_cache=False`` recomputes the whole (cropped) context each step: the reference path.
    The model needs ``cfg.block_size`` and, for caching, ``new_cache(batch_size, max_len)``
    (:class:`lmforge.models.gpt.GPT` has both). Arguments are checked at call time.

    >>> from lmforge.config import ModelConfig
    >>> from lmforge.models import build
    >>> model = build(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=32))
    >>> new = list(generate(model, [1, 2, 3], max_new_tokens=5, temperature=0))  # greedy
    >>> len(new), new == list(generate(model, [1, 2, 3], 5, temperature=0, use_cache=False))
    (5, True)
    """
    ids = prompt_ids.flatten().tolist() if isinstance(prompt_ids, Tensor) else [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("generate needs a non-empty prompt (at least one token id)")
    if not (isinstance(max_new_tokens, numbers.Integral) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens}")
    if seed is not None and not (isinstance(seed, numbers.Integral) and 0 <= seed < 2**64):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    _check_sampling(temperature, top_k, top_p)
    return _generate(model, ids, max_new_tokens, temperature, top_k, top_p, eos_id, seed, use_cache)


def _generate(model, ids, max_new_tokens, temperature, top_k, top_p, eos_id, seed, use_cache) -> Iterator[int]:
    block_size = model.cfg.block_size
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    ctx = list(ids)  # every token so far; the model sees at most the last block_size
    cache = None
    if use_cache and hasattr(model, "new_cache") and len(ctx) < block_size and max_new_tokens > 1:
        with _model_step(model):  # the last sampled token is never fed back: len + max_new - 1 slots
            cache = model.new_cache(1, max_len=min(block_size, len(ctx) + max_new_tokens - 1))
    step_input: Tensor | None = None  # (1, 1): the last sampled token, fed to the cache
    for _ in range(max_new_tokens):
        with _model_step(model):
            if cache is not None and len(ctx) > cache.max_len:
                cache = None  # context outgrew the window: positions shift from now on, recompute
            if cache is not None and step_input is not None:
                logits = model(step_input, cache)  # (1, 1, V): decode one token
            else:  # prefill (into the cache if any) or full recompute of the cropped window
                window = torch.tensor([ctx[-block_size:]], dtype=torch.long, device=device)  # (1, T)
                logits = model(window, cache) if cache is not None else model(window)  # (1, T, V)
            tok = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (1,)
        t = int(tok)
        if eos_id is not None and t == eos_id:
            return
        yield t
        ctx.append(t)
        step_input = tok.view(1, 1)


class _Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


def stream_decode(tokenizer: _Decoder, ids_iter: Iterable[int]) -> Iterator[str]:
    """Turn a stream of token ids into text pieces, safe for byte-level BPE.

    One character may span several tokens (a Chinese character is 3 UTF-8 bytes, an emoji 4), and
    decoding a partial character gives the replacement char U+FFFD. So we decode a small window of
    recent ids and emit only the new suffix, holding it back while it ends with U+FFFD; what is held
    at the end of the stream is flushed as is. The window starts at the previous emitted piece (not
    at 0: linear cost) and includes it as context, so tokenizers that treat a leading space or
    prefix specially still decode consistently. ``"".join(pieces) == tokenizer.decode(all_ids)``
    for byte-level BPE.

    Example (bytes as ids): ``[228, 189, 160, 229, 165, 189]`` ("你好") yields nothing after the
    first two ids, then "你", nothing, nothing, then "好".
    """
    ids: list[int] = []
    prefix_offset = read_offset = 0  # ids[prefix_offset:read_offset] = the last emitted piece (context)
    prefix_text = ""  # its decoded text
    for t in ids_iter:
        ids.append(int(t))
        new_text = tokenizer.decode(ids[prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            yield new_text[len(prefix_text) :]
            prefix_offset, read_offset = read_offset, len(ids)
            prefix_text = tokenizer.decode(ids[prefix_offset:read_offset])
    if len(ids) > read_offset:  # flush whatever is held back (an incomplete character stays U+FFFD)
        rest = tokenizer.decode(ids[prefix_offset:])[len(prefix_text) :]
        if rest:
            yield rest


def complete(
    run_dir: str,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    device: str = "auto",
) -> Iterator[str]:
    """Text pieces continuing ``prompt`` with a run directory's model and tokenizer (``lmforge generate``).

    Stops at the tokenizer's eos token (not emitted) or after ``max_new_tokens``. An empty prompt
    starts from the bos token. Bad arguments raise :class:`UserError` (naming the ``lmforge generate``
    flag) before anything is loaded or generated; the run is loaded before this returns, so once it has
    returned only the model steps are left.
    """
    from lmforge import tasks
    from lmforge.devices import resolve_device
    from lmforge.errors import UserError
    from lmforge.models.layers import for_decode
    from lmforge.runs.loader import load_run

    check_generate_args(prompt, max_new_tokens, temperature, top_k, top_p, seed)
    cfg, model, tok = load_run(run_dir, resolve_device(device))
    task = tasks.of(cfg).name
    if task != "lm":
        raise UserError(f"{run_dir}: generate needs a causal language model (a gpt pretraining run), "
                        f"this run is a {'classifier' if task == 'classify' else cfg.model.name + ' encoder'}")
    for_decode(model)  # weights laid out for batch-1 decoding (same outputs, faster on CPU)
    ids = tok.encode(prompt) or ([tok.bos_id] if tok.bos_id is not None else [])
    if not ids:
        raise UserError("generate: empty prompt and the tokenizer has no bos token to start from")
    try:
        ids_iter = generate(model, ids, max_new_tokens, temperature, top_k, top_p, eos_id=tok.eos_id, seed=seed)
    except ValueError as e:
        raise UserError(f"generate: {e}") from None
    return stream_decode(tok, ids_iter)


def check_generate_args(prompt: str, max_new_tokens: int, temperature: float, top_k: int | None,
                        top_p: float | None, seed: int | None) -> None:
    """The arguments of :func:`complete` (``lmforge generate``), each a UserError naming its flag:
    ``--temperature: expected a finite number >= 0, got nan``."""
    from lmforge.config.fields import check_float, check_int, check_text, show
    from lmforge.errors import UserError

    if not isinstance(prompt, str):
        raise UserError(f"--prompt: expected a string, got {show(prompt)}")
    check_text("--prompt", prompt)
    check_int("--max-new-tokens", max_new_tokens, 1, None)
    check_float("--temperature", temperature, 0.0, lo_open=False)
    if top_k is not None:
        check_int("--top-k", top_k, 0, None)
    if top_p is not None:
        check_float("--top-p", top_p, 0.0, 1.0)
        if top_p < MIN_TOP_P:
            raise UserError(f"--top-p: expected a number in (0, 1] of at least {MIN_TOP_P:.2g} (a smaller one is 0 in "
                            f"float32), got {show(top_p)}")
    if seed is not None:
        check_int("--seed", seed, 0, 2**64 - 1)
