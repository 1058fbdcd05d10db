"""Ctrl-C and SIGTERM during training: stop at the next point where a checkpoint can be saved."""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (``kill``, a batch system's time limit) during training: the first
    asks the loop to stop at the next point where it can save a checkpoint (after the current step,
    or after the current task's checkpoint); a second raises KeyboardInterrupt at once (everything
    on disk stays whole: writes are atomic). Outside the main thread signals cannot be caught and
    nothing is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s: stopping after the current step with a checkpoint (again to stop at once)",
                       signal.Signals(signum).name)
