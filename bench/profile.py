"""Summarise py-spy's collapsed stacks (`py-spy record --format raw`): where the time goes.

python -m bench.profile bench/results/profile/daphne-500-steady.txt [--top 40] [--groups]

`--groups` counts each sample once, in the first of `GROUPS` that one of its frames names
(in that order), and prints each group's share.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "function (path/to/file.py:123)" -> "function (file.py)"
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<path>[^:()]+)(?::\d+)?\)$")


# Where a sample's time goes, tried in this order; a frame "matches" when its name contains one
# of the group's words. py-spy's stacks of suspended coroutines are not always whole (a stack may
# start at the consumer), so the shares are good to a few points.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("the ORM's thread", ("_WorkItem.run", "thread_handler")),
    (
        "sending frames",
        ("Generation._send_pending", "GenerationManager.broadcast", "ChatConsumer."),
    ),
    (
        "a request's set-up and end",
        ("AsyncClient.send", "_LinearPool", "connect_tcp", "_response_closed", "aclose"),
    ),
    (
        "reading the upstream",
        ("_next_chunk", "aiter_raw", "_Reply.", "SSEDecoder", "_receive_event", "_Protocol."),
    ),
    ("the generation's own work", ("Generation.",)),
    ("the event loop and Twisted", ("",)),
]


def group_of(frames: list[str]) -> str:
    for name, words in GROUPS:
        if any(word in frame for frame in frames for word in words):
            return name
    return GROUPS[-1][0]


def groups(path: Path) -> str:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            counts[group_of([f for f in stack.split(";") if f])] += int(count_text)
    total = sum(counts.values()) or 1
    lines = [f"{sum(counts.values())} samples", ""]
    lines += [f"{100 * counts[name] / total:6.1f}%  {name}" for name, _ in GROUPS]
    return "\n".join(lines)


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["path"]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if "site-packages" in path or len(parts) > 1 else path
    return f"{match['name']} ({short})"


def summarise(path: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"{total} samples", "", "self:"]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--groups", action="store_true", help="shares of the groups in GROUPS")
    args = parser.parse_args()
    print(groups(args.file) if args.groups else summarise(args.file, args.top))


if __name__ == "__main__":
    main()
