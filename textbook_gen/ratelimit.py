"""Client-side rate limits: sliding windows over requests and tokens, per provider and model.

A sliding window (not a refilling bucket) never bursts past what a server counting over the
same window allows, and lets a run use the whole limit. Limits can be tightened at run time
from the rate-limit headers the server sends.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from textbook_gen.errors import ConfigError


class SlidingWindow:
    """At most ``limit`` units in any ``window`` seconds."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        # We stamp a request when it leaves; the server when it arrives (a new connection, a
        # TLS handshake later). The margin keeps our window from reopening before the server's.
        self.window = window + 0.1 + 0.02 * window
        self._events: deque[tuple[float, int]] = deque()
        self._used = 0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window:
            self._used -= self._events.popleft()[1]

    def wait_time(self, amount: int, now: float) -> float:
        """Seconds until ``amount`` fits; 0 if it fits now."""
        self._expire(now)
        amount = min(amount, self.limit)  # a request larger than the limit waits for an empty window
        if self._used + amount <= self.limit:
            return 0.0
        freed, need = 0, self._used + amount - self.limit
        for at, units in self._events:
            freed += units
            if freed >= need:
                return at + self.window - now
        return self.window

    def take(self, amount: int, now: float) -> None:
        self._events.append((now, amount))
        self._used += amount


class RateLimiter:
    """Requests-per-minute and token-per-minute windows; ``acquire`` waits until all have room."""

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None,
                 input_tpm: int | None = None, output_tpm: int | None = None,
                 window: float = 60.0, share: int = 1):
        self.window = window
        # how many limiters send on one account (Ray workers): each takes its part of what
        # the server reports, since the server's figure is the account's, not this sender's
        self.share = share
        self.requests = SlidingWindow(rpm, window) if rpm else None
        self.tokens = SlidingWindow(tpm, window) if tpm else None
        self.input_tokens = SlidingWindow(input_tpm, window) if input_tpm else None
        self.output_tokens = SlidingWindow(output_tpm, window) if output_tpm else None
        self._lock = asyncio.Lock()
        self._hold_until = 0.0  # monotonic time before which nothing is sent

    @property
    def active(self) -> bool:
        return bool(self._hold_until) or any(
            (self.requests, self.tokens, self.input_tokens, self.output_tokens))

    def hold(self, seconds: float) -> None:
        """The server says a limit is used up for ``seconds``: send nothing until then."""
        self._hold_until = max(self._hold_until, time.monotonic() + min(seconds, 120.0))

    async def acquire(self, input_tokens: int, output_tokens: int) -> None:
        if not self.active:
            return
        candidates = [
            (self.requests, 1),
            (self.tokens, input_tokens + output_tokens),
            (self.input_tokens, input_tokens),
            (self.output_tokens, output_tokens),
        ]
        wants = [(w, n) for w, n in candidates if w is not None]
        async with self._lock:  # first come, first served: no starvation of large requests
            while True:
                now = time.monotonic()
                delay = max([self._hold_until - now, *(w.wait_time(n, now) for w, n in wants)])
                if delay <= 0:
                    for w, n in wants:
                        w.take(n, now)
                    return
                await asyncio.sleep(delay)

    def tighten(self, *, rpm: int | None = None, tpm: int | None = None,
                input_tpm: int | None = None, output_tpm: int | None = None) -> None:
        """Lower (never raise) limits to what the server reports: this sender's part, the
        floor of an equal split, so the parts of ``share`` senders sum to at most the limit.
        A limit smaller than ``share`` leaves some sender none: that stops the run."""
        for attr, value in (("requests", rpm), ("tokens", tpm), ("input_tokens", input_tpm),
                            ("output_tokens", output_tpm)):
            if not value:
                continue
            raw, what = value, attr.replace("_", " ")
            value = value // self.share  # the parts of the senders sum to at most the limit
            if value == 0:
                raise ConfigError(
                    f"the provider reports a limit of {raw} {what} a minute for this account,"
                    f" fewer than the {self.share} Ray workers sending on it, so some would have"
                    f" none: run with --workers {raw} or fewer")
            current = getattr(self, attr)
            if current is None:
                setattr(self, attr, SlidingWindow(value, self.window))
            elif value < current.limit:
                current.limit = value
