"""When a reply's tokens go out (`chat/realtime/pacing.py`): at once unless the process is busy,
a frame left less than a window ago and the next token is likely to join. A fake clock and CPU
make each case exact; the last tests run the real stream with the load fixed."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from chat.realtime import pacing
from chat.realtime.pacing import LoadGauge, Pacing
from chat.testing.wsclient import message, open_socket, send_and_accept

WINDOW = 0.020


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0

    def advance(self, seconds: float, busy: float) -> None:
        """`seconds` of wall time, `busy` of them on the CPU."""
        self.now += seconds
        self.cpu += seconds * busy


def gauge_at(load: float) -> LoadGauge:
    clock = Clock()
    gauge = LoadGauge(clock=lambda: clock.now, cpu=lambda: clock.cpu)
    for _ in range(60):
        clock.advance(pacing.SAMPLE_SECONDS, load)
        gauge.sample()
    return gauge


def run(arrivals: list[float], gauge: LoadGauge) -> list[tuple[float, list[float]]]:
    """Frames (sent at, tokens' arrival times) for tokens arriving at `arrivals`, as the
    generation sends them: at once, or at the time the pacing names."""
    paced = Pacing(gauge, WINDOW)
    frames: list[tuple[float, list[float]]] = []
    pending: list[float] = []
    due: float | None = None
    for at in arrivals:
        if due is not None and due <= at:
            paced.sent(due)
            frames.append((due, pending))
            pending, due = [], None
        pending.append(at)
        when = paced.arrived(at)
        if due is not None:
            continue  # joins the frame already due
        if when is None:
            paced.sent(at)
            frames.append((at, pending))
            pending = []
        else:
            due = when
    if pending:
        assert due is not None
        frames.append((due, pending))
    return frames


def waits(frames: list[tuple[float, list[float]]]) -> list[float]:
    return [sent - at for sent, tokens in frames for at in tokens]


def evenly(gap: float, count: int = 200, start: float = 0.0) -> list[float]:
    return [start + i * gap for i in range(count)]


def test_the_load_is_the_share_of_wall_time_on_the_cpu() -> None:
    assert gauge_at(0.0).load == pytest.approx(0.0)
    assert gauge_at(0.3).load == pytest.approx(0.3)
    assert gauge_at(1.0).load == pytest.approx(1.0)


def test_the_load_is_sampled_at_most_once_a_period() -> None:
    clock = Clock()
    gauge = LoadGauge(clock=lambda: clock.now, cpu=lambda: clock.cpu)
    clock.advance(pacing.SAMPLE_SECONDS / 2, 1.0)
    assert gauge.sample() == 0.0
    clock.advance(pacing.SAMPLE_SECONDS / 2, 1.0)
    assert gauge.sample() == pytest.approx(pacing.SAMPLE_WEIGHT)


def test_more_than_one_core_counts_as_one() -> None:
    assert gauge_at(1.8).load == pytest.approx(1.0)


def test_the_window_grows_with_the_load_from_nothing_to_the_setting() -> None:
    assert gauge_at(0.0).window(WINDOW) == 0.0
    assert gauge_at(pacing.IDLE_LOAD).window(WINDOW) == pytest.approx(0.0, abs=1e-9)
    middle = (pacing.IDLE_LOAD + pacing.BUSY_LOAD) / 2
    assert gauge_at(middle).window(WINDOW) == pytest.approx(WINDOW / 2)
    assert gauge_at(pacing.BUSY_LOAD).window(WINDOW) == pytest.approx(WINDOW)
    assert gauge_at(1.0).window(WINDOW) == pytest.approx(WINDOW)


@pytest.mark.parametrize("gap", [0.002, 0.005, 0.010, 0.020, 0.050])
def test_while_the_process_has_cpu_to_spare_every_token_goes_out_at_once(gap: float) -> None:
    frames = run(evenly(gap), gauge_at(0.3))
    assert len(frames) == 200
    assert max(waits(frames)) == 0.0


@pytest.mark.parametrize("gap", [0.020, 0.0201, 0.025, 0.050])
def test_a_stream_slower_than_one_token_a_window_is_never_held(gap: float) -> None:
    # Tokens one window apart: the last frame left a hair less than a window before each
    # token, which once held every token for the rest of the window without merging anything.
    arrivals = [at + (0.0004 if i % 3 == 0 else 0.0) for i, at in enumerate(evenly(gap))]
    frames = run(arrivals, gauge_at(1.0))
    assert max(waits(frames)) == 0.0
    assert len(frames) == len(arrivals)


@pytest.mark.parametrize("gap", [0.002, 0.005, 0.008])
def test_a_fast_stream_when_busy_gets_at_most_one_frame_a_window(gap: float) -> None:
    frames = run(evenly(gap), gauge_at(1.0))
    sent = [at for at, _ in frames]
    # The first frame after a quiet spell goes at once; after it, one frame per window.
    assert all(b - a >= WINDOW - 1e-9 for a, b in itertools.pairwise(sent[1:]))
    assert max(waits(frames)) <= WINDOW + 1e-9
    assert len(frames) <= 200 * gap / WINDOW + 2


@pytest.mark.parametrize("gap", [0.012, 0.015, 0.019])
def test_a_token_no_other_can_join_within_the_window_is_not_held(gap: float) -> None:
    # Between one and two tokens a window: held, a token would wait for the window's end and
    # go alone all the same.
    frames = run(evenly(gap), gauge_at(1.0))
    assert max(waits(frames)) == 0.0
    assert len(frames) == 200


def test_tokens_of_one_read_go_out_together_at_the_end_of_it() -> None:
    paced = Pacing(gauge_at(0.0), WINDOW)
    assert paced.arrived(0.0) is None
    paced.sent(0.0)
    assert paced.arrived(0.1) is None
    paced.sent(0.1)
    # A second token of the same read: due now, i.e. once the read is taken apart.
    assert paced.arrived(0.1 + pacing.SAME_READ_SECONDS / 10) == 0.1 + pacing.SAME_READ_SECONDS / 10


def test_the_first_token_goes_out_at_once_even_when_busy() -> None:
    paced = Pacing(gauge_at(1.0), WINDOW)
    assert paced.arrived(5.0) is None


def test_no_window_set_means_every_token_goes_at_once() -> None:
    paced = Pacing(gauge_at(1.0), 0.0)
    for at in evenly(0.002):
        assert paced.arrived(at) is None
        paced.sent(at)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("load", [0.0, 1.0])
async def test_the_stream_loses_nothing_whatever_the_load(
    upstream, alice, monkeypatch, load
) -> None:
    monkeypatch.setattr(LoadGauge, "sample", lambda self: load)
    upstream.push_script(tokens=300, interval_ms=2)
    socket = await open_socket(alice)
    started = asyncio.get_running_loop().time()
    accepted = await send_and_accept(socket, "many tokens")
    frames = await socket.done(accepted["message"])
    elapsed = asyncio.get_running_loop().time() - started
    await socket.close()
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [f["seq"] for f in deltas] == list(range(1, len(deltas) + 1))
    saved = await message(accepted["message"])
    assert "".join(f.get("content", "") for f in deltas) == saved.content != ""
    assert frames[-1]["status"] == "complete"
    if load == 1.0:
        # Busy: tokens 2 ms apart share frames, at most one a window (20 ms) after the first.
        assert len(deltas) <= elapsed / 0.020 + 2, (len(deltas), elapsed)
