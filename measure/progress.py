"""A progress line on stderr: redrawn in place on a terminal, a plain line every ~10 % (or 15 s)
otherwise, so CI logs and pipes stay readable."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.label = label
        self.out = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.done = 0
        self.failed = 0
        self.t0 = time.monotonic()
        self._last_t = 0.0
        self._last_decile = -1

    def _line(self) -> str:
        el = time.monotonic() - self.t0
        frac = self.done / self.total if self.total else 1.0
        eta = el / self.done * (self.total - self.done) if self.done else float("nan")
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        fail = f", {self.failed} failed" if self.failed else ""
        eta_s = f"{eta:.0f}s" if eta == eta else "?"
        return f"{self.label} [{bar}] {self.done}/{self.total}{fail} {el:.0f}s elapsed, eta {eta_s}"

    def step(self, ok: bool = True) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        now = time.monotonic()
        if self.tty:
            if now - self._last_t >= 0.1 or self.done == self.total:
                self.out.write("\r\x1b[K" + self._line())
                self.out.flush()
                self._last_t = now
            return
        decile = int(10 * self.done / self.total) if self.total else 10
        if decile != self._last_decile or now - self._last_t >= 15:
            self.out.write(self._line() + "\n")
            self.out.flush()
            self._last_t, self._last_decile = now, decile

    def close(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[K" + self._line() + "\n")
            self.out.flush()
