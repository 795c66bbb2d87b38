"""Progress of long commands: a bar with rate and time left on a terminal, plain lines otherwise.

``Progress(stream, total=1500, label="pretraining")`` then ``update(done, note="loss 3.21")``
and ``close()``. On a terminal the bar is redrawn in place at most ten times a second; in a log
(not a terminal) one line is written per tenth of the way, so CI logs stay short.
"""

from __future__ import annotations

import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, stream: TextIO, *, total: int, label: str, unit: str = "step") -> None:
        self.stream, self.total, self.label, self.unit = stream, max(1, total), label, unit
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._first: tuple[float, int] | None = None  # (time, done) of the first update
        self._drawn = 0.0
        self._next_line = 0
        self.done = 0

    def line(self, done: int, note: str = "") -> str:
        """``label: done/total units (p%)  rate, elapsed, time left  note``; the rate is measured
        from the first update on, so set-up time before it does not skew it."""
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        since, base = self._first
        parts = [f"{self.label}: {done}/{self.total} {self.unit}s ({100 * done / self.total:.0f}%)"]
        if done > base and now > since:
            rate = (done - base) / (now - since)
            left = _clock((self.total - done) / rate)
            parts.append(
                f"{rate:.1f} {self.unit}s/s, {_clock(now - self.start)} so far, ~{left} left"
            )
        return "  ".join([*parts, note] if note else parts)

    def _write(self, text: str) -> None:
        try:  # Django's OutputWrapper (a command's self.stdout) would append its own newline
            self.stream.write(text, ending="")
        except TypeError:
            self.stream.write(text)
        self.stream.flush()

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        if self.tty:
            now = time.monotonic()
            if now - self._drawn < 0.1 and done < self.total:
                return
            self._drawn = now
            width = 24
            filled = int(width * done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            self._write(f"\r[{bar}] {self.line(done, note)}\x1b[K")
        elif done >= self._next_line or done >= self.total:
            self._write(self.line(done, note) + "\n")
            self._next_line = done + max(1, self.total // 10)

    def close(self) -> None:
        if self.tty:
            self._write("\n")
