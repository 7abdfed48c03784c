"""Log-in throttling: a few failed passwords per account (and per address) and then a pause."""

from __future__ import annotations

import hashlib
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse


def _keys(request: HttpRequest, username: str) -> list[str]:
    # Hashed so that user names never become cache keys verbatim.
    user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    address = request.META.get("REMOTE_ADDR", "")
    return [f"login-fail:user:{user}", f"login-fail:addr:{address}"]


def _failures(keys: list[str]) -> int:
    return max((cache.get(key, 0) for key in keys), default=0)


class ThrottledLoginView(auth_views.LoginView):
    """Django's login view, refusing further tries after LOGIN_ATTEMPTS failures within
    LOGIN_LOCKOUT_SECONDS for the same user name or from the same address."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        keys = _keys(request, request.POST.get("username", ""))
        if _failures(keys) >= settings.LOGIN_ATTEMPTS:
            # An unbound form (the password is not even checked) carrying only this error.
            form = AuthenticationForm(request, initial={"username": request.POST.get("username")})
            form.full_clean()
            form.cleaned_data = {}
            minutes = max(1, round(settings.LOGIN_LOCKOUT_SECONDS / 60))
            form.add_error(
                None,
                f"Too many failed attempts. Wait {minutes} minutes and try again, or ask an "
                "admin to reset your password.",
            )
            response = self.render_to_response(self.get_context_data(form=form))
            response.status_code = HTTPStatus.TOO_MANY_REQUESTS
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        for key in _keys(self.request, self.request.POST.get("username", "")):
            cache.add(key, 0, settings.LOGIN_LOCKOUT_SECONDS)
            try:
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, settings.LOGIN_LOCKOUT_SECONDS)
        return super().form_invalid(form)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        cache.delete_many(_keys(self.request, self.request.POST.get("username", "")))
        return super().form_valid(form)
