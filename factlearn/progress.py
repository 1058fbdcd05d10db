"""What a long step shows while it runs: a progress bar on a terminal, whole lines elsewhere.

:func:`progress_bar` is the one way factlearn makes a progress bar (training steps, image decoding,
rendering). On a terminal it is tqdm's bar; when stderr is not a terminal (a log file, CI) tqdm's
carriage returns would leave runs of spaces, so it prints a plain line instead, at most every
``LINE_EVERY`` seconds and when it closes. :func:`phase` frames a step that has no natural count
(importance, evaluation): a line when it starts and one with its duration when it ends.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

LINE_EVERY = 30.0  # seconds between two lines of a bar that is not on a terminal


class LineProgress:
    """The part of tqdm's interface factlearn uses (``update``, ``set_postfix``, ``refresh``,
    ``close``, ``n``, ``total``; a context manager), printing whole lines: ``desc: n/total unit``,
    at most every ``every`` seconds, and a last one with the time taken when it closes (unless
    ``leave`` is False: a passing step, as tqdm's ``leave=False`` bar leaves nothing)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, leave: bool = True, file: TextIO | None = None, every: float = LINE_EVERY):
        self.total, self.desc, self.unit, self.n, self.disable = total, desc, unit, initial, disable
        self.leave = leave
        self.file, self.every = file, every
        self.postfix = ""
        self.start = self.shown = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; print a line when the last one is ``every`` seconds old."""
        self.n += n
        self.refresh()

    def set_postfix(self, **values: object) -> None:
        """Values shown after the count (``loss=0.123``), as tqdm's ``set_postfix``."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def refresh(self) -> None:
        """Print a line if the last one is ``every`` seconds old."""
        if time.monotonic() - self.shown >= self.every:
            self._line("")

    def close(self) -> None:
        """Print the last line, with the time taken (once)."""
        if not self.closed:
            self.closed = True
            if self.leave:
                self._line(f" in {time.monotonic() - self.start:.1f} s")

    def _line(self, suffix: str) -> None:
        if self.disable:
            return
        self.shown = time.monotonic()
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} {self.unit}{suffix}{extra}", file=self.file or sys.stderr, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:  # an error is the user's one line: no progress line after it
            self.closed = True


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, leave: bool = True, delay: float = 0.0):
    """A progress bar on stderr: tqdm's on a terminal, else a :class:`LineProgress`.

    Args:
        total: the count when done (None: unknown).
        desc, unit: what is counted, shown as ``desc: n/total unit``.
        initial: the count already done (a resumed task).
        disable: show nothing (every method still works).
        leave: keep tqdm's bar on the terminal when it closes (a plain line always stays).
        delay: tqdm shows nothing before this many seconds (so an early error stays one line).
    """
    if not sys.stderr.isatty():
        return LineProgress(total, desc, unit, initial, disable, leave)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave, delay=delay)


@contextmanager
def phase(desc: str, enabled: bool = True) -> Iterator[None]:
    """Frame a step without a count: ``desc ...`` on stderr when it starts and ``desc: N.N s`` when
    it ends (nothing after an error, nothing at all unless ``enabled``)."""
    if enabled:
        print(f"{desc} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    yield
    if enabled:
        print(f"{desc}: {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
