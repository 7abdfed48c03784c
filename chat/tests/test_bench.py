"""The benchmark harness (bench/): it runs end to end on a tiny load and counts no lost,
duplicated or out-of-order token. No timing is asserted: timings belong to docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import flush, profile, report, run
from bench.clients import StreamResult


def stamped(indices: list[int]) -> StreamResult:
    result = StreamResult("relayed", tokens_expected=5)
    result.arrivals = [(index, 1_000 + index, 2_000 + index) for index in indices]
    return result


def test_the_harness_counts_lost_duplicated_and_out_of_order_tokens() -> None:
    assert stamped([0, 1, 2, 3, 4]).integrity() == {
        "lost": 0,
        "duplicated": 0,
        "out_of_order": 0,
        "extra": 0,
    }
    assert stamped([0, 2, 1, 1, 4, 7]).integrity() == {
        "lost": 1,  # 3 never came
        "duplicated": 1,  # 1 came twice
        "out_of_order": 2,  # 1 after 2, then 1 again
        "extra": 1,  # 7 was never written
    }


@pytest.mark.django_db
def test_the_flush_benchmark_saves_exactly_what_it_streamed_either_way(capsys) -> None:
    # run() checks each reply's saved text against what it streamed, for both ways of saving.
    cpu_ms = flush.run(replies=3, seconds=4, tokens_per_second=5)
    assert {name: len(times) for name, times in cpu_ms.items()} == {"append": 4, "whole": 4}
    assert "3 replies, 4 flushes" in capsys.readouterr().out


@pytest.mark.slow
def test_the_flush_rate_is_flushes_over_the_time_they_span() -> None:
    # Five flushes a second apart are one a second, however long the window around them was.
    assert run.flush_rate([10.0, 11.0, 12.0, 13.0, 14.0]) == 1.0
    assert run.flush_rate([10.0, 10.5, 11.0]) == 2.0
    assert run.flush_rate([10.0]) is None
    assert run.flush_rate([]) is None


async def test_the_limit_is_bisected_between_the_levels_around_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(report, "one_line", lambda level: "")  # made-up levels, no numbers
    bench = run.Bench.__new__(run.Bench)  # no processes: the levels below are made up
    bench.options = run.parse_args(["--find-limit", "50", "--quiet"])
    probed: list[int] = []

    async def level(streams: int, mode: str) -> dict[str, Any]:
        probed.append(streams)
        # Holds up to 320 streams; a made-up level with only what the bisection reads.
        return {"streams": streams, "mode": mode, "held": streams <= 320}

    bench.level = level  # type: ignore[method-assign]
    bench.log = lambda text: None  # type: ignore[method-assign]
    levels = [
        {"streams": 100, "mode": "steady", "held": True},
        {"streams": 500, "mode": "steady", "held": False},
        {"streams": 1000, "mode": "steady", "held": False},
        {"streams": 500, "mode": "burst", "held": True},
    ]
    limit = await bench.find_limit("steady", levels)
    assert probed == [300, 400, 350]
    assert limit == {"held": 300, "failed": 350, "probes": [300, 400, 350]}
    assert [lv["streams"] for lv in levels if lv.get("probe")] == [300, 400, 350]
    # Every burst level held: nothing above to bisect toward, and nothing is run.
    assert await bench.find_limit("burst", levels) == {
        "held": 500,
        "failed": None,
        "probes": [],
    }
    assert probed == [300, 400, 350]
    assert report.limit_line("steady", limit) == (
        "Limit (steady): 300 streams held, 350 not (probes: 300, 400, 350)."
    )


def test_the_harness_relays_a_tiny_load_without_losing_a_token(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    options = run.parse_args(
        [
            "--streams", "3", "--mode", "burst", "--tokens", "10", "--ttft-ms", "50",
            "--users", "2", "--idle", "5", "--cycles", "6", "--cycle-concurrency", "3",
            "--server-core", "", "--client-core", "", "--output", str(output), "--quiet",
            "--watch-loop",
        ]
    )  # fmt: skip
    results = run.execute(options)

    [level] = results["levels"]
    relayed, direct = level["cohorts"]["relayed"], level["cohorts"]["direct"]
    assert relayed["streams"] == direct["streams"] == 3
    assert relayed["statuses"] == direct["statuses"] == {"complete": 3}
    assert relayed["tokens"] == direct["tokens"] == 30
    nothing = {"lost": 0, "duplicated": 0, "out_of_order": 0, "extra": 0}
    assert relayed["integrity"] == direct["integrity"] == nothing
    assert relayed["corrupt"] == relayed["seq_gaps"] == 0
    assert level["faults"] == 0
    # Pauses are timed from the server's own records, over the level's window only.
    # (A tiny level may run no collection at all: only what was recorded must have been counted.)
    gc_stats = level["server"]["gc"]
    assert len(gc_stats["longest_ms"]) == len(gc_stats["collections"]) == 3
    for longest, count in zip(gc_stats["longest_ms"], gc_stats["collections"], strict=True):
        assert longest >= 0
        assert count > 0 or longest == 0
    assert set(level["server"]["loop_late"]) == {"max_ms", "ticks_over_5ms"}
    assert level["db"]["replies"] == 3
    assert results["idle"]["sockets"] == 5
    assert results["growth"]["cycles"] == 6
    assert results["growth"]["faults"] == 0
    assert output.exists()
    assert "| 3 | burst | 30 |" in output.with_suffix(".md").read_text()


def test_profile_samples_fall_in_the_first_group_they_match() -> None:
    orm = ["Thread.run (threading.py)", "_WorkItem.run (futures/thread.py)", "accept (x)"]
    send = ["Generation._read (g.py)", "Generation._send_pending (g.py)", "write (d.py)"]
    read = ["Generation._read (g.py)", "stream_chat (u.py)", "_next_chunk (u.py)"]
    own = ["Generation._read (g.py)", "Generation._queued (g.py)"]
    loop = ["AsyncioSelectorReactor.run (r.py)", "select (selectors.py)"]
    assert profile.group_of(orm) == "the ORM's thread"
    assert profile.group_of(send) == "sending frames"  # before the generation's own work
    assert profile.group_of(read) == "reading the upstream"
    assert profile.group_of(own) == "the generation's own work"
    assert profile.group_of(loop) == "the event loop and Twisted"
