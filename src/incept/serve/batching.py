"""Server-side batching: concurrent requests share one forward pass.

Each request takes a place (`admit`) once its body has arrived (uploads in progress are
bounded apart, in `uploads.py`, so a slow client never holds a place), and keeps it while it is
decoded, queued and in the model: that number is bounded; one more is `Overloaded` (the app
answers 503). A prepared image is `submit`ted to a queue; one collector task takes
the first waiting image, then more until the batch is full or `max_wait` has passed since the
first, and runs the batch on a single model thread while the event loop keeps accepting
requests. Under load the batches fill at once; a lone request waits at most `max_wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch


class Overloaded(Exception):
    """Every place is taken: the client should retry later."""


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int = 16,
        max_wait: float = 0.005,
        max_pending: int = 64,
    ):
        """run_batch: N stacked inputs to N result rows (runs on the model thread).
        max_wait: seconds the first request of a batch waits for company."""
        if max_batch < 1 or max_pending < 1 or max_wait < 0:
            raise ValueError("max_batch and max_pending must be >= 1 and max_wait >= 0")
        self.run_batch = run_batch
        self.max_batch, self.max_wait, self.max_pending = max_batch, max_wait, max_pending
        self.pending = 0
        self.batches_run = 0
        self._queue: asyncio.Queue | None = None
        self._collector: asyncio.Task | None = None
        self._model_thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="incept-model")
        self._collector = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        while self._queue is not None and not self._queue.empty():
            _, waiting = self._queue.get_nowait()
            if not waiting.done():
                waiting.set_exception(Overloaded("the server is shutting down"))
        if self._model_thread is not None:
            self._model_thread.shutdown(wait=True)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Holds one of `max_pending` places for a request's whole life."""
        if self.pending >= self.max_pending:
            raise Overloaded(f"the server holds {self.pending} requests already")
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def submit(self, item: torch.Tensor) -> torch.Tensor:
        """The result row of one input, computed in a batch with whatever else is waiting."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        result = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, result))
        return await result

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except asyncio.TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        waiting = [(item, result) for item, result in batch if not result.done()]
        if not waiting:  # every client gave up
            return
        inputs = torch.stack([item for item, _ in waiting])
        try:
            rows = await loop.run_in_executor(self._model_thread, self.run_batch, inputs)
        except Exception as error:  # a model failure fails its batch, not the server
            for _, result in waiting:
                if not result.done():
                    result.set_exception(error)
            return
        self.batches_run += 1
        for (_, result), row in zip(waiting, rows):
            if not result.done():
                result.set_result(row)
