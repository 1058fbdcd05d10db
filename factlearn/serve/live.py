"""Hot swap: the checkpoint being served, replaced when training completes a newer task.

A checkpoint counts once its ``state.json`` exists (:meth:`factlearn.run.RunDir.completed`; it is
written last). A background thread looks at the run directory every ``poll_s`` seconds; when the
newest completed task is not the one served, it loads that checkpoint and rebuilds the fact index
(:meth:`factlearn.query.RunIndex.load`) off the request path, then replaces one reference. A
:class:`~factlearn.query.RunIndex` never changes once built, so a request (or a micro-batch) that
took the reference once answers from one model, whichever the thread puts in place meanwhile.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..query import RunIndex
from ..run import RunDir

logger = logging.getLogger(__name__)


class LiveIndex:
    """The :class:`RunIndex` being served and the thread that swaps it.

    Args:
        run_dir: the run directory, possibly still being trained into by another process.
        load: builds the index of the checkpoint after a task (``load("B2")``).
        poll_s: seconds between looks at the run directory.

    A run directory that is not one, or has no completed task yet, is a UserError here.
    """

    def __init__(self, run_dir: str | Path, load: Callable[[str], RunIndex], poll_s: float = 2.0):
        self.run = RunDir(run_dir)
        self.run.require()
        done = self.run.completed()
        if not done:
            raise UserError(f"{self.run.path} has no completed task yet: serve needs the checkpoint of at least "
                            "one task (checkpoints/<TASK>/state.json); start it once training has finished one")
        self.poll_s = poll_s
        self.swap_error: str | None = None  # why the newest checkpoint could not be loaded, if it could not
        self._load = load
        self._current = load(done[-1])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> RunIndex:
        """The index being served. Read it once per request: the swap replaces the reference, never
        the object behind it."""
        return self._current

    def check(self) -> bool:
        """One look at the run directory; load and switch to the newest completed task's checkpoint
        when it is not the one served. Returns whether it switched. A checkpoint that cannot be
        loaded is logged (once) and the old one kept serving."""
        try:
            done = self.run.completed()
            if not done or done[-1] == self._current.task:
                return False
            fresh = self._load(done[-1])
        except (UserError, OSError) as exc:
            if str(exc) != self.swap_error:
                logger.warning("still serving %s: %s", self._current.task, exc)
            self.swap_error = str(exc)
            return False
        old, self._current = self._current.task, fresh  # the swap: one reference assignment, atomic
        self.swap_error = None
        logger.info("now serving the checkpoint after %s (was %s)", fresh.task, old)
        return True

    def start(self) -> None:
        """Start the polling thread (a daemon: it never keeps the process alive)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="factlearn-serve-swap", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the polling thread and wait for it (a load under way finishes first)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # a bug must not silently end hot swapping: log it and keep looking
                logger.exception("checking %s for a new checkpoint failed", self.run.path)
