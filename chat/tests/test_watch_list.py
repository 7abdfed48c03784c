"""The watch rules of one socket (chat/realtime/watching.py), without a socket."""

from chat.realtime.watching import WatchList


def test_conversations_are_kept_in_the_order_first_watched_and_once() -> None:
    watching = WatchList(3)
    for conversation in (5, 2, 5, 9):
        watching.add(conversation)
    assert list(watching) == [5, 2, 9]
    assert len(watching) == 3 and watching.full
    assert 2 in watching and 7 not in watching


def test_to_fit_one_more_the_oldest_is_let_go() -> None:
    watching = WatchList(2)
    watching.add(1)
    assert watching.to_let_go(2) == []  # room left
    watching.add(2)
    assert watching.to_let_go(1) == []  # watched already
    assert watching.to_let_go(3) == [1]
    watching.discard(1)
    assert watching.to_let_go(3) == []


def test_a_limit_lowered_under_what_is_watched_lets_go_of_enough() -> None:
    watching = WatchList(4)
    for conversation in (1, 2, 3, 4):
        watching.add(conversation)
    watching.limit = 2
    assert watching.to_let_go(9) == [1, 2, 3]


def test_iterating_while_letting_go_sees_the_list_as_it_was() -> None:
    watching = WatchList(3)
    for conversation in (1, 2, 3):
        watching.add(conversation)
    for conversation in watching:
        watching.discard(conversation)
    assert len(watching) == 0 and not watching.full
