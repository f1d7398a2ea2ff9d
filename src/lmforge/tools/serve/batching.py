"""Dynamic batching of classify (and translate) requests: concurrent requests share one forward pass
(one batched decoding for translations, :mod:`lmforge.tools.serve.translation`).

A request's texts (already token ids) wait in a queue. A collector takes the first waiting request, waits
until ``window_s`` after its arrival or until ``max_batch`` texts are waiting, whichever comes first, and
hands all waiting texts (up to ``max_batch``) to a worker thread as one padded forward pass; each request then
gets its rows. A request that arrives alone, with no pass running, goes at once: waiting only pays when other
requests are around (so one client at a time sees no window). Up to ``parallel`` passes run at once (one per
worker thread, so every core is used); when all are busy the collector waits for one to finish while new
requests pile up, so under load batches fill without waiting for the window. A request with more than
``max_batch`` texts runs alone, in chunks of ``max_batch``. A request that timed out in the queue is dropped
before its batch runs. With batching off (``lmforge serve --no-batching``), each request runs its own forward
pass in the worker pool.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Executor

import torch


@torch.inference_mode()
def classify_rows(model: torch.nn.Module, rows: list[list[int]], pad_id: int, max_batch: int) -> torch.Tensor:
    """Class probabilities (N, num_labels) of token-id rows, ``max_batch`` rows per padded forward pass."""
    from lmforge.data.batches import collate

    out = []
    for i in range(0, len(rows), max_batch):
        x, mask = collate(rows[i : i + max_batch], pad_id)  # (B, T) each, right-padded
        out.append(model(x, mask).float().softmax(-1))  # (B, num_labels)
    return torch.cat(out)


class Batcher:
    """``await batcher.submit(rows)`` -> ``run(all rows of a batch)`` sliced to the request's rows.

    ``run`` (called in ``pool``) takes a list of rows and returns a sequence (a tensor, a list) with one
    item per row, in order. ``stats`` counts passes (``batches``), requests and rows, and the most requests
    seen in one pass.
    """

    def __init__(self, run, pool: Executor, window_s: float = 0.005, max_batch: int = 32, batching: bool = True,
                 parallel: int = 1):
        self.fn, self.pool = run, pool
        self.window_s, self.max_batch, self.batching, self.parallel = window_s, max_batch, batching, parallel
        self.stats = {"batches": 0, "requests": 0, "rows": 0, "max_requests_per_batch": 0}
        self._pending: deque = deque()  # (rows, future, arrival time)
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._rows = 0  # rows waiting in _pending

    def _forward(self, rows: list):
        return self.fn(rows)

    async def submit(self, rows: list, timeout_s: float = float("inf")):
        """The results of ``rows``; asyncio.TimeoutError after ``timeout_s`` (the rows are then dropped
        if their batch has not started)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if timeout_s <= 0:
            raise asyncio.TimeoutError
        expire = loop.call_later(min(timeout_s, 1e9), _fail, fut, asyncio.TimeoutError())  # no task per request
        try:
            if not self.batching:
                self._count(1, len(rows))
                job = loop.run_in_executor(self.pool, self._forward, rows)
                job.add_done_callback(lambda j: _copy(j, fut))
                return await fut
            if self._task is None or self._task.done():
                self._wake, self._slots = asyncio.Event(), asyncio.Semaphore(self.parallel)
                self._task = loop.create_task(self._collect())
            self._pending.append((rows, fut, loop.time()))
            self._rows += len(rows)
            if len(self._pending) == 1 or self._rows >= self.max_batch:  # start collecting, or a batch is full
                self._wake.set()
            return await fut
        finally:
            expire.cancel()

    def _count(self, requests: int, rows: int) -> None:
        s = self.stats
        s["batches"] += 1
        s["requests"] += requests
        s["rows"] += rows
        s["max_requests_per_batch"] = max(s["max_requests_per_batch"], requests)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()  # a worker is free (requests keep queueing meanwhile)
            alone = not self._running and len(self._pending) == 1  # no sign of concurrent requests: don't wait
            deadline = self._pending[0][2] + (0.0 if alone else self.window_s)
            while self._rows < self.max_batch and (left := deadline - loop.time()) > 0:
                self._wake.clear()  # submit() sets it when the batch is full
                timer = loop.call_later(left, self._wake.set)
                await self._wake.wait()
                timer.cancel()
            batch, n = [], 0
            while self._pending:
                rows, fut, _ = self._pending[0]
                if fut.done():  # its request timed out while waiting
                    self._rows -= len(self._pending.popleft()[0])
                    continue
                if batch and n + len(rows) > self.max_batch:
                    break
                batch.append(self._pending.popleft())
                self._rows -= len(rows)
                n += len(rows)
            if not batch:
                self._slots.release()
                continue
            self._count(len(batch), n)
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list) -> None:
        """One forward pass for ``batch`` in the pool; each request gets its rows (or the exception)."""
        try:
            probs = await asyncio.get_running_loop().run_in_executor(
                self.pool, self._forward, [r for rows, _, _ in batch for r in rows])
        except Exception as e:  # noqa: BLE001 - handed to each waiting request
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            self._slots.release()
        i = 0
        for rows, fut, _ in batch:
            if not fut.done():
                fut.set_result(probs[i : i + len(rows)])
            i += len(rows)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class ClassifyBatcher(Batcher):
    """``await batcher.submit(rows)`` -> their probabilities (len(rows), num_labels): token-id rows through
    padded forward passes of ``model``."""

    def __init__(self, model: torch.nn.Module, pad_id: int, pool: Executor, window_s: float = 0.005,
                 max_batch: int = 32, batching: bool = True, parallel: int = 1):
        self.model, self.pad_id = model, pad_id
        super().__init__(self._classify, pool, window_s, max_batch, batching, parallel)

    def _classify(self, rows: list[list[int]]) -> torch.Tensor:
        return classify_rows(self.model, rows, self.pad_id, self.max_batch)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _copy(src: asyncio.Future, dst: asyncio.Future) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())
