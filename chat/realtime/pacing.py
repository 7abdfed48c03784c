"""When a reply's text goes out: at once, or held for a moment to share a frame with the next.

A frame costs the process about the same whatever it carries, so merging tokens saves CPU; but
a held token waits, and a reader sees every wait. So a token is held only when merging is likely
and worth it:

- the process is busy: the window grows from nothing while the process has CPU to spare to
  `STREAM_COALESCE_MS` as it nears one full core (`LoadGauge`);
- a frame of this reply left less than a window ago; and
- at this reply's pace the next token arrives before that window ends, so it will join.

Otherwise the token goes out at once: a token held with no other to join it would only wait.
So a stream of more than two tokens a window gets one frame a window; one slower than that, one
frame a token, never held. Tokens that arrive together (one read of the upstream
carried several) go out together, at the end of that read, never one frame each.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Load below which nothing is held, and load at which the whole window applies.
IDLE_LOAD = 0.3
BUSY_LOAD = 0.7

# How often the load is sampled (lazily, when a token asks), and the weight of a new sample.
SAMPLE_SECONDS = 0.1
SAMPLE_WEIGHT = 0.5

# Tokens less than this far apart came in one read of the upstream.
SAME_READ_SECONDS = 0.001

# The weight of a new gap in a reply's typical gap between reads.
GAP_WEIGHT = 0.3


class LoadGauge:
    """The process's CPU time as a share of wall time, smoothed: 0 idle, 1 one full core.

    Sampled at most every `SAMPLE_SECONDS`, by whichever token asks first; no task of its own.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._clock = clock
        self._cpu = cpu
        self._sampled_at = clock()
        self._cpu_at = cpu()
        self.load = 0.0

    def sample(self) -> float:
        now = self._clock()
        elapsed = now - self._sampled_at
        if elapsed >= SAMPLE_SECONDS:
            used = self._cpu()
            share = min(1.0, max(0.0, (used - self._cpu_at) / elapsed))
            self.load += (share - self.load) * SAMPLE_WEIGHT
            self._sampled_at, self._cpu_at = now, used
        return self.load

    def window(self, longest: float) -> float:
        """The coalescing window at the current load: 0 below IDLE_LOAD, `longest` from
        BUSY_LOAD, in proportion between."""
        share = (self.sample() - IDLE_LOAD) / (BUSY_LOAD - IDLE_LOAD)
        return longest * min(1.0, max(0.0, share))


class Pacing:
    """One reply's pace: when each of its tokens should go out."""

    def __init__(self, gauge: LoadGauge, longest_window: float) -> None:
        self._gauge = gauge
        self._longest = longest_window
        self._last_frame = float("-inf")
        self._last_arrival: float | None = None
        # The typical gap between this reply's reads of the upstream (None until two reads).
        self.gap: float | None = None

    def arrived(self, now: float) -> float | None:
        """A token arrived at `now`: None to send it at once, else when to send it (`now`
        itself meaning at the end of this read, together with the tokens it carried)."""
        last, self._last_arrival = self._last_arrival, now
        if last is not None and now - last < SAME_READ_SECONDS:
            return now
        if last is not None:
            gap = now - last
            self.gap = gap if self.gap is None else self.gap + (gap - self.gap) * GAP_WEIGHT
        if self.gap is None or self._longest <= 0:
            return None
        due = self._last_frame + self._gauge.window(self._longest)
        if now >= due or now + self.gap > due:
            return None
        return due

    def sent(self, now: float) -> None:
        self._last_frame = now
