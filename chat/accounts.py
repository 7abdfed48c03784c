"""Log-in throttling: a few failed passwords per account (and per address) and then a pause.

The count lives in an authentication backend, so that every `authenticate()` is throttled
whatever page makes it (our log-in page, the admin's, any added later). Each attempt is counted
atomically before its password is checked, so a burst of parallel guesses gets no more checks
than a patient one: at most LOGIN_ATTEMPTS per account and per address in LOGIN_LOCKOUT_SECONDS.

Failures against an account count against the account (by its id, so every spelling that logs
in as it shares one count) and against the address. Failures against names that are no account
count only against the address: made-up names cannot lock a real user out. The address is the
client's, read through the reverse proxies named in TRUSTED_PROXIES.
"""

from __future__ import annotations

import ipaddress
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse

LOCKED_CODE = "too_many_attempts"
# Set on a request whose log-in was refused unchecked, for the page to say why (and answer 429).
_LOCKED_ATTRIBUTE = "_login_locked_out"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: list[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(request: HttpRequest) -> str:
    """The client's address: the socket's peer, or, when that peer is one of our proxies, the
    first address in X-Forwarded-For (read from the right) that is not one of our proxies.
    A header from any other peer is ignored: anyone can write one."""
    peer_text = request.META.get("REMOTE_ADDR", "") or ""
    peer = _parse_address(peer_text)
    proxies = [ipaddress.ip_network(p, strict=False) for p in settings.TRUSTED_PROXIES]
    if peer is None or not proxies or not _trusted(peer, proxies):
        return str(peer) if peer is not None else peer_text
    client = peer
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    for hop in reversed(forwarded.split(",")):
        address = _parse_address(hop)
        if address is None:
            # Our proxies write addresses only; anything else was there before them.
            break
        client = address
        if not _trusted(address, proxies):
            break
    return str(client)


def _address_key(address: str) -> str:
    parsed = _parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        # One IPv6 client has a whole /64 to rotate through.
        address = str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return f"login-fail:addr:{address}"


def _count(key: str) -> int:
    """Add this attempt to the count under `key` and return the new count, atomically: both
    LocMemCache and RedisCache increment in one step, so parallel attempts each see their own
    number. The window starts at the first attempt and is not extended by later ones."""
    timeout = settings.LOGIN_LOCKOUT_SECONDS
    for _ in range(3):
        cache.add(key, 0, timeout)
        try:
            count = cache.incr(key)
        except ValueError:
            continue  # expired between add and incr: start a new window
        if count == 1:
            # Redis creates a key without expiry when it expires between its existence check
            # and INCR; the first attempt of a window makes sure it has one.
            cache.touch(key, timeout)
        return int(count)
    # The counter keeps expiring under us: refuse rather than check unthrottled.
    return settings.LOGIN_ATTEMPTS + 1


def _uncount(key: str) -> None:
    try:
        count = cache.decr(key)
    except ValueError:
        return  # the window ended meanwhile
    if count <= 0:
        # As in _count: a key Redis recreated must not outlive the window.
        cache.touch(key, settings.LOGIN_LOCKOUT_SECONDS)


def locked_out(request: HttpRequest | None) -> bool:
    return bool(getattr(request, _LOCKED_ATTRIBUTE, False))


def lockout_message() -> str:
    minutes = max(1, round(settings.LOGIN_LOCKOUT_SECONDS / 60))
    return (
        f"Too many failed attempts. Wait {minutes} minutes and try again, or ask an admin to "
        "reset your password."
    )


class ThrottledModelBackend(ModelBackend):
    """Django's user name and password check, counted and refused as the module says.

    Once it has looked at a user name and password it decides: the user, or PermissionDenied,
    which stops `authenticate()` from asking any later backend. So the ModelBackend listed
    after it (only there so that sessions from before it still load) never checks a password
    this one did not count."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        user_model = get_user_model()
        if username is None:
            username = kwargs.get(user_model.USERNAME_FIELD)
        if username is None or password is None:
            return None
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            user = None
        keys = [] if request is None else [_address_key(client_address(request))]
        if user is not None:
            keys.append(f"login-fail:user:{user.pk}")
        counts = [_count(key) for key in keys]
        if any(count > settings.LOGIN_ATTEMPTS for count in counts):
            if request is not None:
                setattr(request, _LOCKED_ATTRIBUTE, True)
            raise PermissionDenied("too many failed log-in attempts")
        if user is None:
            # As ModelBackend does: hash anyway, so the time taken does not tell whether the
            # account exists.
            user_model().set_password(password)
            raise PermissionDenied("no such account")
        if not (user.check_password(password) and self.user_can_authenticate(user)):
            raise PermissionDenied("wrong password")
        # A success is not a failure: the account starts afresh, and the address forgets this
        # attempt only (not earlier failures, or logging in to one's own account between
        # guesses would lift the address's limit).
        cache.delete(keys[-1])
        if request is not None:
            _uncount(keys[0])
        return user


class _LockoutMessage:
    """Forms whose refusal says so when the throttle, not the password, refused the log-in."""

    request: HttpRequest | None

    def get_invalid_login_error(self) -> ValidationError:
        if locked_out(self.request):
            return ValidationError(lockout_message(), code=LOCKED_CODE)
        return super().get_invalid_login_error()  # type: ignore[misc]  # a mixin: the form has it


class LoginForm(_LockoutMessage, AuthenticationForm):
    pass


class AdminLoginForm(_LockoutMessage, AdminAuthenticationForm):
    pass


class ThrottledLoginView(auth_views.LoginView):
    """Django's log-in page, answering 429 while the throttle refuses."""

    authentication_form = LoginForm

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        if locked_out(self.request):
            response.status_code = HTTPStatus.TOO_MANY_REQUESTS
        return response


def admin_login(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    """The admin's log-in page, with the same lockout message and 429 (the throttle itself
    needs no page: it is in the backend)."""
    response = admin.site.login(request, **kwargs)
    if locked_out(request):
        response.status_code = HTTPStatus.TOO_MANY_REQUESTS
    return response
