"""``POST /v1/translate``: translation runs (task ``translate``), decoded by the task's own batched search.

A request's sentences (source token ids) wait in a :class:`~lmforge.tools.serve.batching.Batcher`, one per
beam width: concurrent requests with the same ``beam`` are decoded together by one call of
:func:`lmforge.models.search.translate_ids` (greedy for beam 1, beam search above), in the translation thread
pool, and each request gets its sentences back. So a translation is what ``lmforge translate`` gives for the
same text and beam. A blank text is not decoded: its translation is ``""`` (as ``lmforge translate`` keeps
blank lines blank).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lmforge.tools.serve.batching import Batcher
from lmforge.tools.serve.limits import APIError, deadline, input_texts
from lmforge.tools.serve.registry import served
from lmforge.tools.serve.schemas import TranslateRequest, TranslateResponse


class TranslateBatcher:
    """``await batcher.submit(rows, beam, timeout_s)`` -> [(text, output tokens)] per source row.

    One :class:`Batcher` per beam width (made on first use); ``stats`` sums theirs (``batches`` = decoding calls).
    """

    def __init__(self, sm, pool: Executor, window_s: float = 0.005, max_batch: int = 32, batching: bool = True,
                 parallel: int = 1):
        self.sm, self.pool = sm, pool
        self.window_s, self.max_batch, self.batching, self.parallel = window_s, max_batch, batching, parallel
        self.by_beam: dict[int, Batcher] = {}

    @property
    def stats(self) -> dict:
        keys = ("batches", "requests", "rows")
        out = {k: sum(b.stats[k] for b in self.by_beam.values()) for k in keys}
        out["max_requests_per_batch"] = max((b.stats["max_requests_per_batch"] for b in self.by_beam.values()), default=0)
        return out

    def decode(self, rows: list[list[int]], beam: int) -> list[tuple[str, int]]:
        """Worker thread: the translations of ``rows`` (source token ids) with ``beam``, in one decoding call."""
        import torch

        from lmforge.models.search import translate_ids
        from lmforge.tasks.translate import decode_config

        cfg, tok = self.sm.cfg, self.sm.tok
        with torch.inference_mode():
            out = translate_ids(self.sm.model, rows, tok.bos_id, tok.eos_id, tok.pad_id, decode_config(cfg, beam),
                                batch_size=self.max_batch, max_positions=cfg.model.block_size)
        return [(tok.decode(ids, skip_special_tokens=True).strip(), len(ids)) for ids in out]

    async def submit(self, rows: list[list[int]], beam: int, timeout_s: float = float("inf")) -> list[tuple[str, int]]:
        b = self.by_beam.get(beam)
        if b is None:
            b = self.by_beam[beam] = Batcher(lambda rows: self.decode(rows, beam), self.pool, self.window_s,
                                             self.max_batch, self.batching, self.parallel)
        return await b.submit(rows, timeout_s)

    def close(self) -> None:
        for b in self.by_beam.values():
            b.close()


def translate_batchers(models: dict, pool: Executor, window_s: float, max_batch: int, batching: bool,
                       parallel: int) -> dict[str, TranslateBatcher]:
    return {i: TranslateBatcher(m, pool, window_s, max_batch, batching, parallel)
            for i, m in models.items() if m.kind == "translation"}


def add_translate_route(app: FastAPI, secured: list, errors: dict) -> None:
    models, batchers, limits = app.state.models, app.state.translators, app.state.limits

    @app.post("/v1/translate", response_model=TranslateResponse, tags=["translate"], dependencies=secured,
              responses=errors, summary="the translation of each input text by a translation run (greedy for beam 1, "
                                        "else beam search; concurrent requests share batched decoding)")
    async def translate(body: TranslateRequest, request: Request):
        from lmforge.tasks.translate import encode_side

        sm = served(models, body.model, "translation")
        texts = input_texts(body, limits)
        beam = min(sm.cfg.translate.beam, limits.max_beam) if body.beam is None else body.beam
        if beam > limits.max_beam:
            raise APIError(422, f"beam: {beam} is above this server's limit of {limits.max_beam}", "invalid_value", "beam")
        nonblank = [i for i, t in enumerate(texts) if t.strip()]
        rows = encode_side(sm.src_tok, [texts[i] for i in nonblank], sm.max_length) if nonblank else []
        out = [("", 0)] * len(texts)
        if rows:
            try:
                done = await batchers[sm.id].submit(rows, beam, deadline(request, limits) - time.monotonic())
            except asyncio.TimeoutError:
                raise APIError(408, f"translation not finished within the server's timeout of {limits.timeout_s:g} s",
                               "timeout") from None
            for i, r in zip(nonblank, done):
                out[i] = r
        data = [{"object": "translation", "index": i, "text": text} for i, (text, _) in enumerate(out)]
        n, m = sum(len(r) for r in rows), sum(k for _, k in out)
        return JSONResponse({"object": "list", "model": sm.id, "data": data,
                             "usage": {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}})
