"""What saving the partial text of streaming replies costs this process as the replies grow.

.venv/bin/python -m bench.flush [--replies 200] [--seconds 100] [--tokens-per-second 30]

Once per simulated second, runs `progress.flush_progress` for two sets of N streaming replies
that each grew by a second of tokens (stamped as the stand-in stamps them): one set saved as the
app saves it, appending only the new text, the other by writing each reply's whole text (what
the app does once after a save whose outcome it could not know, and what it did every second
before). The two alternate, so both see the same machine. Prints the CPU time of this thread per
flush over the first and the last ten seconds, and the length each reply reached. In the server
a flush runs on the ORM's thread and takes that CPU from the event loop's core.

SQLite in a temporary folder by default (never the development database); with DATABASE_URL in
the environment, that database (migrated; the rows made here are deleted at the end).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid

from bench.accept import MODEL, setup


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flush")
    parser.add_argument("--replies", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=100)
    parser.add_argument("--tokens-per-second", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chutes-flush-") as data_dir:
        setup(data_dir)
        run(args.replies, args.seconds, args.tokens_per_second)


def run(replies: int, seconds: int, tokens_per_second: int) -> dict[str, list[float]]:
    from django.contrib.auth import get_user_model

    from chat.actions import progress
    from chat.models import ChatModel, Conversation, Message

    user = get_user_model().objects.create_user(
        f"flush-{uuid.uuid4().hex[:8]}", password=uuid.uuid4().hex
    )
    model = ChatModel.objects.get(model_id=MODEL)
    conversation = Conversation.objects.create(owner=user, title="flush", model=model)

    def streaming() -> list[int]:
        return [
            Message.objects.create(
                conversation=conversation,
                user=user,
                role="assistant",
                status="streaming",
                model=model,
            ).pk
            for _ in range(replies)
        ]

    sets = {"append": streaming(), "whole": streaming()}
    texts = {name: dict.fromkeys(ids, "") for name, ids in sets.items()}
    cpu_ms: dict[str, list[float]] = {"append": [], "whole": []}
    token = 0
    for second in range(1, seconds + 1):
        stamps = []
        for _ in range(tokens_per_second):
            token += 1
            stamps.append(f"⟦{token}:{time.monotonic_ns()}⟧ ")
        delta = "".join(stamps)
        for name, ids in sets.items():
            for pk in ids:
                texts[name][pk] += delta
            whole = name == "whole"
            updates = [
                progress.Progress(
                    pk, second, second - 1, texts[name][pk] if whole else delta, "", whole=whole
                )
                for pk in ids
            ]
            started = time.thread_time()
            refused = progress.flush_progress(updates, [])
            cpu_ms[name].append((time.thread_time() - started) * 1000)
            assert not refused, refused
    for name, ids in sets.items():
        saved = dict(Message.objects.filter(pk__in=ids).values_list("pk", "content"))
        assert saved == texts[name], f"{name}: the saved text is not what was streamed"
    length = len(next(iter(texts["append"].values())).encode())
    window = min(10, seconds)
    print(f"{replies} replies, {seconds} flushes, {length // 1024} KiB of text each at the end")
    for name, times in cpu_ms.items():
        first, last = times[:window], times[-window:]
        print(
            f"  {name}: {sum(first) / len(first):.1f} ms of CPU per flush over the first "
            f"{window}, {sum(last) / len(last):.1f} over the last {window}"
        )
    conversation.delete()
    user.delete()
    return cpu_ms


if __name__ == "__main__":
    main()
