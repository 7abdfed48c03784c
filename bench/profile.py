"""Summarise py-spy's collapsed stacks (`py-spy record --format raw`): where the time goes.

python -m bench.profile bench/results/profile/daphne-500-steady.txt [--top 40]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "function (path/to/file.py:123)" -> "function (file.py)"
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<path>[^:()]+)(?::\d+)?\)$")


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
    args = parser.parse_args()
    print(summarise(args.file, args.top))


if __name__ == "__main__":
    main()
