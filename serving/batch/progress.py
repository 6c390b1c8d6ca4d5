"""Progress of the batch job: a bar with rate and ETA on a terminal, plain lines in logs.

On a TTY each stage draws a ``tqdm`` bar; otherwise (CI, ``kubectl logs``) a stage
prints one line every ``interval`` seconds and one when it ends, e.g.
``extract: 12/40 units (30%), 51,234 rows, 850 rows/s, ETA 2m10s``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO


class _Sink(Protocol):
    """What a :class:`Stage` writes to: a text stream, or :class:`_Null` when progress is off."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Stage:
    """One stage's progress: ``update(done, rows)`` as work completes, ``close()`` at the end."""

    def __init__(self, name: str, total: int, unit: str, stream: _Sink, bar: bool,
                 interval: float, done: int = 0) -> None:
        self.name, self.total, self.unit, self.stream = name, total, unit, stream
        self.done, self.rows, self.interval = done, 0, interval
        self._start = self._last = time.monotonic()
        self._skipped = done  # done before this run (resumed): not part of the rate
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, desc=name, unit=f" {unit}", file=stream,
                             dynamic_ncols=True, smoothing=0.1)

    def update(self, done: int = 1, rows: int = 0) -> None:
        self.done += done
        self.rows += rows
        if self._bar is not None:
            self._bar.update(done)
            if self.rows:
                self._bar.set_postfix(rows=f"{self.rows:,}", refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """``name: done/total unit (pct), rows, rate, ETA``."""
        elapsed = max(1e-9, time.monotonic() - self._start)
        fresh = self.done - self._skipped
        parts = [f"{self.name}: {self.done:,}/{self.total:,} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        if self.rows:
            parts.append(f"{self.rows:,} rows, {self.rows / elapsed:,.0f} rows/s")
        if fresh > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) * elapsed / fresh)}")
        if self._skipped:
            parts.append(f"{self._skipped:,} done before (resumed)")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write(self.line() + f", {_duration(time.monotonic() - self._start)}\n")
            self.stream.flush()


class Progress:
    """Makes :class:`Stage` objects; ``mode`` is auto (bar on a TTY), bar, lines or off."""

    def __init__(self, stream: TextIO | None = None, mode: str = "auto", interval: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.mode = mode
        self.interval = interval

    def stage(self, name: str, total: int, unit: str = "units", done: int = 0) -> Stage:
        bar = self.mode == "bar" or (self.mode == "auto" and self.stream.isatty())
        stream = self.stream if self.mode != "off" else _Null()
        return Stage(name, total, unit, stream, bar and self.mode != "off", self.interval, done)

    def note(self, text: str) -> None:
        if self.mode != "off":
            self.stream.write(text + "\n")
            self.stream.flush()


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
