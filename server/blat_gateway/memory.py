"""Giving memory back after load: glibc keeps what the process frees in its malloc arenas, so without a trim a gateway
holds its peak long after the requests are gone (4.3 GB idle after a 30-minute trial, issue 22).

`MemoryReleaser.soon()` (called when a batcher runs out of work) asks for a `malloc_trim(0)` `delay_s` later; asks
that come meanwhile share it. Each trim that followed asks is followed by one more `settle_s` later, for what the
requests free after their model work (decoded audio, answers): a busy gateway trims every `settle_s`, an idle one
stops after that last trim. It also caps glibc's malloc arenas (one per contending thread by default, up to 8 per
core, each holding its own free memory). Off glibc (musl, macOS) it does nothing.

Measured on the default bundle (16 max-size uploads at once, the ONNX Runtime arena off; RSS 0.29 GB at start):
0.84 GB as the last answer went out, 0.55 GB once trimmed, 0.45 GB trimmed with 2 arenas. The rest is live (threads
the load created, Python's own object arenas).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
MALLOC_ARENAS = 2


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


class MemoryReleaser:
    def __init__(self, delay_s: float = 0.5, settle_s: float = 2.0):
        self.delay_s, self.settle_s = delay_s, settle_s
        libc = _glibc()
        self._trim: Callable[[int], int] | None = libc.malloc_trim if libc else None
        if libc:  # arenas made from now on; the gateway makes this before its threads
            libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._asked = False  # asks since the last trim
        self.trims = 0  # done since start (tests read it)

    @property
    def available(self) -> bool:
        return self._trim is not None

    def soon(self) -> None:
        """Trim in `delay_s` (what the caller and the requests finishing meanwhile free is then returned)."""
        if self._trim is None:
            return
        with self._lock:
            self._asked = True
            if self._timer is None:
                self._start(self.delay_s)

    def _start(self, after_s: float) -> None:
        self._timer = threading.Timer(after_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if self._asked:
                self._asked = False
                self._start(self.settle_s)
        self._trim(0)
        self.trims += 1

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
