"""Dynamic batching: requests queue here and one worker thread runs them on the pipeline.

Generation requests that arrive within `window_s` of the oldest waiting one and share its
sampler settings run as ONE sampler batch (up to `max_images` images); each keeps its own
random stream (Pipeline.sampling with per-prompt seeds) and is decoded on its own, so
batching does not change a request's images. Other work (edits) runs alone, in arrival
order. The queue is bounded (`QueueFull` -> 429) and a cancelled job (timeout, client gone)
is dropped before it runs, or stopped at its next sampler step if it is running.
The model never runs on the event loop: results come back through the loop's thread-safe
callbacks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..pipeline import Pipeline
from ..sampling.control import Control, controlled


class QueueFull(Exception):
    pass


@dataclass
class Job:
    """One request's work: a generation (prompt, n, seed under `key`) or any `call`."""

    future: asyncio.Future
    key: tuple | None = None  # sampler settings; generations with equal keys batch together
    prompt: str = ""
    n: int = 1
    seed: int = 0
    call: Callable[[], Any] | None = None
    queued_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False


class Batcher:
    def __init__(
        self,
        pipe: Pipeline,
        max_images: int = 16,
        window_s: float = 0.02,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.pipe, self.max_images, self.window_s, self.max_queue = pipe, max_images, window_s, max_queue
        self.on_batch = on_batch or (lambda images: None)
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="fastmuse-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting to start."""
        return len(self._queue)

    def submit(self, job: Job) -> Job:
        with self._cv:
            if len(self._queue) >= self.max_queue:
                raise QueueFull
            self._queue.append(job)
            self._cv.notify()
        return job

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # -- worker thread --------------------------------------------------------------------
    def _next(self) -> list[Job] | None:
        """The oldest live job plus the generations that may join it, once its window closed."""
        with self._cv:
            while True:
                while self._queue and self._queue[0].cancelled:
                    self._queue.popleft()
                if self._stop:
                    return None
                if self._queue:
                    break
                self._cv.wait()
            first = self._queue[0]
            if first.key is not None:  # let more requests arrive, unless the batch is full already
                while not self._stop:
                    left = first.queued_at + self.window_s - time.monotonic()
                    if left <= 0 or self._images(first.key) >= self.max_images:
                        break
                    self._cv.wait(left)
            self._queue.popleft()
            batch, images = [first], first.n
            if first.key is not None:
                for job in list(self._queue):
                    if job.key == first.key and not job.cancelled and images + job.n <= self.max_images:
                        self._queue.remove(job)
                        batch.append(job)
                        images += job.n
            return [j for j in batch if not j.cancelled]

    def _images(self, key: tuple) -> int:
        return sum(j.n for j in self._queue if j.key == key and not j.cancelled)

    def _work(self) -> None:
        while (batch := self._next()) is not None:
            if not batch:
                continue
            # a running job stops at the next sampler step once no request waits for it
            control = Control(cancelled=lambda b=batch: all(j.cancelled for j in b), progress=False)
            try:
                with controlled(control):
                    results = [batch[0].call()] if batch[0].call is not None else self._generate(batch)
            except Exception as e:  # noqa: BLE001  (handed to every waiting request; Cancelled too)
                for job in batch:
                    _resolve(job.future, exception=e)
                continue
            for job, result in zip(batch, results, strict=True):
                _resolve(job.future, result=result)

    def _generate(self, batch: list[Job]) -> list[list]:
        steps, guidance, options = batch[0].key
        self.on_batch(sum(j.n for j in batch))
        tokens = self.pipe.generate_tokens(
            [j.prompt for j in batch],
            n=[j.n for j in batch],
            seed=[j.seed for j in batch],
            steps=steps,
            guidance=guidance,
            **dict(options),
        )
        # decoded per request: the decoder's convolutions round differently at other batch sizes
        return [self.pipe.decode(t) for t in tokens.split([j.n for j in batch])]


def _resolve(future: asyncio.Future, result: Any = None, exception: BaseException | None = None) -> None:
    def set_it() -> None:
        if not future.done():
            future.set_exception(exception) if exception is not None else future.set_result(result)

    future.get_loop().call_soon_threadsafe(set_it)
