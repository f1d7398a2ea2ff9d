"""``/v1/completions``: generation in a worker thread, stop strings, OpenAI's response and chunk formats.

Sampling is :func:`lmforge.tools.generate.generate` (temperature, top-p, top-k, seed, eos) and text comes
from :func:`lmforge.tools.generate.stream_decode`, so a completion is what ``lmforge generate`` gives
for the same prompt and seed. A request's choices run one after another in one worker thread, which
sends events to the event loop through an ``asyncio.Queue``: the loop never runs a model step. The
thread checks a cancel flag before every token, so a request that timed out or whose client went
away stops within one step.

Stop strings: generation ends before the first occurrence of any of them (the stop string is not
returned; ``finish_reason`` is "stop"). While streaming, the last ``len(longest stop) - 1``
characters are held back, since they may be the start of a stop string; for example with stop
``["\\n\\n"]`` a piece ending in one newline is sent without it until the next piece shows whether
a second follows.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from lmforge.tools.generate import generate, stream_decode
from lmforge.tools.serve.limits import APIError, error_body


@dataclass
class Job:
    """A validated completion request: prompts as token ids and the sampling settings."""

    model_id: str
    prompts: list[list[int]]
    n: int
    max_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: list[str]
    stream: bool = False
    include_usage: bool = False

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def pieces(sm, ids: list[int], job: Job, seed: int | None, stopped) -> Iterator[tuple[str, str | None, int]]:
    """(text, None, tokens so far) per piece, then ('', finish_reason, tokens) last; nothing more once ``stopped()``."""
    count = [0]

    def tokens():
        for t in generate(sm.model, ids, job.max_tokens, job.temperature, job.top_k, job.top_p,
                          eos_id=sm.tok.eos_id, seed=seed):
            if stopped():
                return
            count[0] += 1
            yield t
            if stopped():
                return

    hold = max((len(s) for s in job.stop), default=1) - 1
    held = ""
    for piece in stream_decode(sm.tok, tokens()):
        held += piece
        hits = [i for i in (held.find(s) for s in job.stop) if i >= 0]
        if hits:
            before = held[: min(hits)]
            if before:
                yield before, None, count[0]
            yield "", "stop", count[0]
            return
        cut = len(held) - hold
        if cut > 0:
            yield held[:cut], None, count[0]
            held = held[cut:]
    if stopped():
        return
    if held:
        yield held, None, count[0]
    yield "", "length" if count[0] >= job.max_tokens else "stop", count[0]


def run_job(sm, job: Job, emit, cancel: threading.Event, deadline: float = float("inf")) -> None:
    """Worker thread: every choice of ``job``; ``emit`` gets ('text', index, str), ('finish', index, reason),
    then ('done', completion_tokens), or ('error', exception). Stops quietly once cancelled or past
    ``deadline`` (time.monotonic()), even if nobody reads its events any more."""

    def stopped() -> bool:
        return cancel.is_set() or time.monotonic() > deadline

    try:
        total = 0
        for j, ids in enumerate(job.prompts):
            for k in range(job.n):
                index = j * job.n + k
                # generate() takes seeds in [0, 2**64); torch always read a negative one modulo 2**64
                seed = None if job.seed is None else (job.seed + index) % 2**64
                held = []  # without streaming, a choice's text is sent once: fewer wake-ups of the event loop
                if stopped():  # e.g. it waited for a worker until its request timed out
                    return
                for text, finish, n in pieces(sm, ids, job, seed, stopped):
                    if stopped():
                        return
                    if text and job.stream:
                        emit(("text", index, text))
                    elif text:
                        held.append(text)
                    if finish:
                        total += n
                        if held:
                            emit(("text", index, "".join(held)))
                        emit(("finish", index, finish))
                if stopped():  # pieces() ended early, unfinished: no "done" that could beat the timeout to the reader
                    return
        emit(("done", total))
    except Exception as e:  # noqa: BLE001 - reported to the request, never kills the worker
        emit(("error", e))


class Running:
    """A job started in ``pool``; iterate its events with a deadline, ``cancel()`` to stop it."""

    def __init__(self, sm, job: Job, pool, deadline: float):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel_flag = threading.Event()
        self.deadline = deadline
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.future = self.loop.run_in_executor(pool, run_job, sm, job, self._emit, self.cancel_flag, deadline)

    def _emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancel_flag.set()

    def cancel(self) -> None:
        self.cancel_flag.set()

    async def next_event(self, timeout_s: float):
        """The next event; APIError 408 past the deadline (and the job is cancelled)."""
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            event = await asyncio.wait_for(self.queue.get(), left)
        except asyncio.TimeoutError:
            self.cancel()
            raise APIError(408, f"completion not finished within the server's timeout of {timeout_s:g} s "
                                "(ask for fewer tokens, or retry later)", "timeout") from None
        if event[0] == "error":
            self.cancel()
            raise event[1]
        return event


def _usage(job: Job, completion_tokens: int) -> dict:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": job.prompt_tokens + completion_tokens}


async def complete(run: Running, job: Job, timeout_s: float) -> dict:
    """The whole response (non-streaming)."""
    texts = [[] for _ in range(len(job.prompts) * job.n)]
    finish: list[str | None] = [None] * len(texts)
    try:
        while True:
            event = await run.next_event(timeout_s)
            if event[0] == "text":
                texts[event[1]].append(event[2])
            elif event[0] == "finish":
                finish[event[1]] = event[2]
            else:
                break
    finally:
        run.cancel()
    choices = [{"text": "".join(t), "index": i, "logprobs": None, "finish_reason": f}
               for i, (t, f) in enumerate(zip(texts, finish))]
    return {"id": run.id, "object": "text_completion", "created": run.created, "model": job.model_id,
            "choices": choices, "usage": _usage(job, event[1])}


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def stream(run: Running, job: Job, first, timeout_s: float) -> AsyncIterator[bytes]:
    """Server-sent events: one chunk per piece and per finish, an optional usage chunk, then ``data: [DONE]``.

    An error after the 200 status was sent (a timeout mid-stream) is sent as ``data: {"error": ...}``
    before ``[DONE]``; the ``openai`` client raises it as an APIError.
    """
    head = {"id": run.id, "object": "text_completion", "created": run.created, "model": job.model_id}
    event = first
    try:
        while event[0] != "done":
            kind, index, value = event
            text, reason = (value, None) if kind == "text" else ("", value)
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
            yield _sse({**head, "choices": [choice]})
            try:
                event = await run.next_event(timeout_s)
            except APIError as e:
                yield _sse(error_body(e.status, e.message, e.code))
                break
            except Exception as e:  # noqa: BLE001 - the status line is sent already
                yield _sse(error_body(500, f"generation failed: {type(e).__name__}", "internal_error"))
                break
        else:
            if job.include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(job, event[1])})
        yield b"data: [DONE]\n\n"
    finally:
        run.cancel()
