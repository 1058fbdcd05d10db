"""Micro-batching: the images of requests that arrive together are embedded in one forward pass.

One worker thread owns the model. A request announces itself when it starts being read
(:meth:`MicroBatcher.expect`) and hands over its decoded images when they are ready. The worker
takes the oldest waiting request and, while other announced requests are still being read, waits
up to ``wait_s`` after that request's arrival for them to join, so a lone client pays no wait and
many clients share forward passes (throughput grows with concurrency). A batch is answered from one
snapshot of the live index, taken once: no answer mixes two models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..query import RunIndex

logger = logging.getLogger(__name__)

# What a request gets back: the task whose checkpoint answered, and per image its top-k facts.
Answer = tuple[str, list[list[dict]]]


@dataclass
class _Job:
    images: torch.Tensor  # (n, 3, size, size) uint8
    top_k: int
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Embeds waiting requests' images together and searches each request's top-k.

    Args:
        current: returns the index to answer from (the live snapshot), called once per batch.
        wait_s: how long the oldest request of a batch may wait for announced ones to join.
        max_images: the most images in one batch (a single larger request still goes alone).
    """

    def __init__(self, current: Callable[[], RunIndex], wait_s: float = 0.005, max_images: int = 64):
        self.current = current
        self.wait_s = wait_s
        self.max_images = max_images
        self.batches = 0  # forward passes run, for /health and the bench
        self._jobs: deque[_Job] = deque()
        self._announced = 0  # requests being read that have not handed over their images yet
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread."""
        with self._cond:
            self._closed = False
        self._thread = threading.Thread(target=self._work, name="factlearn-serve-batch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Answer what is waiting, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @contextmanager
    def expect(self) -> Iterator[Callable[[torch.Tensor, int], Future]]:
        """Announce a request for the time it is read and decoded; yields ``submit(images, top_k)``,
        which queues its uint8 images (N, 3, size, size) and returns a Future of an :data:`Answer`.
        Leaving without submitting (a bad upload) withdraws the announcement."""
        submitted = False

        def submit(images: torch.Tensor, top_k: int) -> Future:
            nonlocal submitted
            if self._thread is None:
                raise RuntimeError("MicroBatcher.start() was not called")
            job = _Job(images, top_k)
            with self._cond:
                self._jobs.append(job)
                self._announced -= 1
                submitted = True
                self._cond.notify_all()
            return job.future

        with self._cond:
            self._announced += 1
        try:
            yield submit
        finally:
            if not submitted:
                with self._cond:
                    self._announced -= 1
                    self._cond.notify_all()

    def _take(self) -> list[_Job]:
        """The next batch (empty once closed and drained)."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return []
            deadline = self._jobs[0].arrived + self.wait_s
            while (self._announced and not self._closed and sum(len(j.images) for j in self._jobs) < self.max_images
                   and (left := deadline - time.monotonic()) > 0):
                self._cond.wait(left)
            batch, n = [], 0
            while self._jobs and (not batch or n + len(self._jobs[0].images) <= self.max_images):
                batch.append(self._jobs.popleft())
                n += len(batch[-1].images)
            return batch

    def _work(self) -> None:
        while batch := self._take():
            self._answer(batch)

    def _answer(self, batch: list[_Job]) -> None:
        try:
            snapshot = self.current()  # once per batch: every answer in it comes from this model
            embeddings = snapshot.model.encode_images(torch.cat([j.images for j in batch])).numpy()  # (N, 3*d)
            self.batches += 1
            start = 0
            for job in batch:
                rows = embeddings[start : start + len(job.images)]
                start += len(job.images)
                job.future.set_result((snapshot.task, snapshot.search(rows, job.top_k)))
        except Exception as exc:  # the requests get a 500 each; the worker goes on with the next batch
            logger.exception("answering a batch of %d requests failed", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
