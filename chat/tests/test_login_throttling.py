"""Log-in throttling cannot be bypassed (parallel bursts, look-alike names, the admin's page,
direct `authenticate()` calls) nor turned against users (made-up names, every client behind the
reverse proxy sharing one address)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connections
from django.test import Client, RequestFactory

from chat.accounts import client_address

from .conftest import PASSWORD
from .test_settings import load_settings

pytestmark = pytest.mark.django_db

LOCKED = "Too many failed attempts. Wait 15 minutes"


@pytest.fixture(autouse=True)
def throttle(settings: Any) -> None:
    settings.LOGIN_ATTEMPTS = 3
    settings.LOGIN_LOCKOUT_SECONDS = 900
    settings.TRUSTED_PROXIES = []
    # Hashing is not under test here, and the real hasher is slow on purpose.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def log_in(
    username: str,
    password: str,
    *,
    address: str = "198.51.100.1",
    forwarded: str | None = None,
    path: str = "/accounts/login/",
    client: Client | None = None,
) -> Any:
    client = client or Client()
    extra: dict[str, Any] = {"REMOTE_ADDR": address}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return client.post(path, {"username": username, "password": password}, **extra)


def refused_for_throttle(response: Any) -> bool:
    return response.status_code == HTTPStatus.TOO_MANY_REQUESTS and LOCKED in response.text


# Parallel bursts ------------------------------------------------------------------------------


class PasswordChecks:
    """Counts the attempts that reach a password check, and holds each there until every
    attempt of the burst has either reached a check or been answered: so all the attempts that
    could overlap do, whatever the scheduling, and no sleep decides it."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        self.checked = 0
        self.answered = 0
        self.changed = threading.Condition()

    def all_arrived(self) -> bool:
        return self.checked + self.answered >= self.attempts

    def reached_check(self) -> None:
        with self.changed:
            self.checked += 1
            self.changed.notify_all()
            # The timeout only keeps a broken run from hanging; it decides nothing.
            assert self.changed.wait_for(self.all_arrived, timeout=120)

    def was_answered(self) -> None:
        with self.changed:
            self.answered += 1
            self.changed.notify_all()


@pytest.fixture
def password_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[PasswordChecks]:
    checks = PasswordChecks(attempts=40)
    check_password = AbstractBaseUser.check_password

    def counted(self: AbstractBaseUser, raw_password: str) -> bool:
        checks.reached_check()
        return check_password(self, raw_password)

    monkeypatch.setattr(AbstractBaseUser, "check_password", counted)
    yield checks


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_parallel_burst_of_wrong_passwords_gets_at_most_login_attempts_checks(
    user, password_checks: PasswordChecks
) -> None:
    def attempt(number: int) -> int:
        try:
            # Each from its own address: only the account's count can stop them.
            return log_in("alice", f"guess {number}", address=f"203.0.113.{number}").status_code
        finally:
            password_checks.was_answered()
            connections.close_all()

    with ThreadPoolExecutor(max_workers=password_checks.attempts) as pool:
        statuses = list(pool.map(attempt, range(password_checks.attempts)))

    assert password_checks.checked <= 3
    assert statuses.count(HTTPStatus.TOO_MANY_REQUESTS) >= password_checks.attempts - 3
    # And the right password is refused too until the pause is over.
    response = log_in("alice", PASSWORD, address="192.0.2.200")
    assert refused_for_throttle(response)


# Look-alike names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spellings",
    [
        ["\uff41\uff4c\uff49\uff43\uff45", "al\u2170ce", " alice "],
        ["\uff41lice", "a\uff4cice", "al\uff49ce"],
    ],
)
def test_every_spelling_that_logs_in_as_an_account_shares_its_count(
    user, spellings: list[str]
) -> None:
    for index, name in enumerate(spellings):
        # Django's form normalises the name (NFKC) before it looks the account up.
        assert log_in(name, "wrong", address=f"203.0.113.{index}").status_code == HTTPStatus.OK
    response = log_in("alice", PASSWORD, address="192.0.2.200")
    assert refused_for_throttle(response)


def test_the_spellings_above_do_log_in_as_the_account(user) -> None:
    for name in ("\uff41\uff4c\uff49\uff43\uff45", "al\u2170ce", "\uff41lice"):
        client = Client()
        assert log_in(name, PASSWORD, client=client).status_code == HTTPStatus.FOUND
        assert client.session["_auth_user_id"] == str(user.pk)


# Every page, every caller ------------------------------------------------------------------------


def test_the_admin_log_in_page_is_throttled_with_the_same_count(admin_user) -> None:
    # Failures on either page count together.
    assert log_in("root", "wrong").status_code == HTTPStatus.OK
    for _ in range(2):
        response = log_in("root", "wrong", path="/admin/login/", address="203.0.113.9")
        assert response.status_code == HTTPStatus.OK
    client = Client()
    response = log_in("root", PASSWORD, path="/admin/login/", address="192.0.2.7", client=client)
    assert refused_for_throttle(response)
    assert "_auth_user_id" not in client.session
    # The user's own page says the same.
    assert refused_for_throttle(log_in("root", PASSWORD, address="192.0.2.8"))


def test_the_admin_log_in_still_works_below_the_limit(admin_user) -> None:
    client = Client()
    response = log_in("root", PASSWORD, path="/admin/login/", client=client)
    assert response.status_code == HTTPStatus.FOUND
    assert client.get("/admin/").status_code == HTTPStatus.OK


def test_any_authenticate_call_is_throttled(user) -> None:
    request = RequestFactory().post("/anywhere", REMOTE_ADDR="203.0.113.50")
    for _ in range(3):
        assert authenticate(request, username="alice", password="wrong") is None
    assert authenticate(request, username="alice", password=PASSWORD) is None
    # Without a request (a script), the account's count still applies.
    assert authenticate(None, username="alice", password=PASSWORD) is None


def test_a_success_resets_the_account_but_not_the_addresss_failures(user, make_user) -> None:
    make_user("mallory")
    # Logging in to one's own account between guesses must not lift the address's limit.
    assert log_in("alice", "guess 1").status_code == HTTPStatus.OK
    assert log_in("mallory", PASSWORD).status_code == HTTPStatus.FOUND
    assert log_in("alice", "guess 2").status_code == HTTPStatus.OK
    assert log_in("mallory", PASSWORD).status_code == HTTPStatus.FOUND
    assert log_in("alice", "guess 3").status_code == HTTPStatus.OK
    assert refused_for_throttle(log_in("mallory", PASSWORD))


# Made-up names and the reverse proxy -------------------------------------------------------------


def test_made_up_names_lock_out_only_their_address(user) -> None:
    for index in range(6):
        log_in(f"nobody{index}", "wrong", address="203.0.113.66")
    assert refused_for_throttle(log_in("alice", PASSWORD, address="203.0.113.66"))
    assert log_in("alice", PASSWORD, address="192.0.2.10").status_code == HTTPStatus.FOUND


def test_behind_the_proxy_made_up_names_never_lock_out_a_real_user(user, settings) -> None:
    # As deploy/nginx sets it up: every request comes from 127.0.0.1 with X-Forwarded-For.
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    for index in range(10):
        response = log_in(
            f"made-up-{index}", "wrong", address="127.0.0.1", forwarded="203.0.113.66"
        )
        assert response.status_code in (HTTPStatus.OK, HTTPStatus.TOO_MANY_REQUESTS)
    assert refused_for_throttle(
        log_in("alice", PASSWORD, address="127.0.0.1", forwarded="203.0.113.66")
    )
    response = log_in("alice", PASSWORD, address="127.0.0.1", forwarded="192.0.2.10")
    assert response.status_code == HTTPStatus.FOUND


def test_from_an_untrusted_peer_the_forwarded_header_is_ignored(user, settings) -> None:
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    # A client that writes its own header, a new address each time, is still one address.
    for index in range(3):
        log_in(f"made-up-{index}", "wrong", address="203.0.113.66", forwarded=f"10.0.0.{index}")
    assert refused_for_throttle(
        log_in("alice", PASSWORD, address="203.0.113.66", forwarded="192.0.2.99")
    )


@pytest.mark.parametrize(
    ("proxies", "peer", "forwarded", "client"),
    [
        ([], "127.0.0.1", "203.0.113.5", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", "203.0.113.5", "203.0.113.5"),
        (["127.0.0.1"], "127.0.0.1", "6.6.6.6, 203.0.113.5", "203.0.113.5"),
        (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", "6.6.6.6, 203.0.113.5, 10.1.2.3", "203.0.113.5"),
        (["127.0.0.1"], "127.0.0.1", "", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", "not an address", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", "garbage, 203.0.113.5", "203.0.113.5"),
        (["127.0.0.1"], "198.51.100.4", "203.0.113.5", "198.51.100.4"),
        (["::1"], "::1", "2001:db8::7", "2001:db8::7"),
        (["127.0.0.1"], "::ffff:127.0.0.1", "203.0.113.5", "203.0.113.5"),
    ],
)
def test_the_client_address_is_read_through_trusted_proxies_only(
    settings, proxies: list[str], peer: str, forwarded: str, client: str
) -> None:
    settings.TRUSTED_PROXIES = proxies
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_address(request) == client


def test_trusted_proxies_that_are_not_addresses_are_refused_at_start_up() -> None:
    result = load_settings({"TRUSTED_PROXIES": "127.0.0.1, nginx"})
    assert result.returncode != 0
    assert "TRUSTED_PROXIES must list addresses or networks, not 'nginx'" in result.stderr
    loaded = load_settings({"TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"}, "settings.TRUSTED_PROXIES")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == '["127.0.0.1", "10.0.0.0/8"]'
