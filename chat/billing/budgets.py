"""Per-user monthly spending limits and what was spent against them.

A month is a calendar month in the server's TIME_ZONE. What counts against the limit is every
settled charge's cost plus every open reservation (the worst case of a call still running), so
concurrent calls can never overshoot the limit together. Sends of one user are serialised by the
caller's transaction (see `chat.actions.replies._lock_user`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Q, Sum
from django.utils import timezone

from chat import errors, rows
from chat.errors import Refused
from chat.models import Charge, Profile

from .prices import usd

ZERO = Decimal(0)


def month_start(moment: datetime | None = None) -> datetime:
    """Midnight of the first day of `moment`'s month (server time zone), aware."""
    local = timezone.localtime(moment or timezone.now())
    return timezone.make_aware(datetime(local.year, local.month, 1))


def next_month_start(start: datetime) -> datetime:
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return timezone.make_aware(datetime(year, month, 1))


def limit_for(user: User) -> Decimal | None:
    """The user's monthly limit in USD, or None for no limit."""
    profile = rows.one_by(Profile, "user", user.pk)
    mode = profile.budget_mode if profile else Profile.BudgetMode.DEFAULT
    if mode == Profile.BudgetMode.UNLIMITED:
        return None
    if mode == Profile.BudgetMode.CUSTOM and profile is not None:
        return profile.monthly_limit
    return settings.MONTHLY_BUDGET_USD


@dataclass(frozen=True)
class Standing:
    limit: Decimal | None
    spent: Decimal  # settled costs this month
    reserved: Decimal  # worst cases of calls still running

    @property
    def committed(self) -> Decimal:
        return self.spent + self.reserved

    @property
    def remaining(self) -> Decimal | None:
        if self.limit is None:
            return None
        return max(self.limit - self.committed, ZERO)

    @property
    def share_used(self) -> Decimal | None:
        if not self.limit:
            return None
        return self.committed / self.limit


def standing(user: User, start: datetime | None = None) -> Standing:
    return _standing(user, limit_for(user), start)


def _standing(user: User, limit: Decimal | None, start: datetime | None = None) -> Standing:
    start = start or month_start()
    totals = Charge.objects.filter(user=user, created_at__gte=start).aggregate(
        spent=Sum("cost", filter=Q(state=Charge.State.SETTLED)),
        reserved=Sum("reserved", filter=Q(state=Charge.State.RESERVED)),
    )
    return Standing(limit=limit, spent=totals["spent"] or ZERO, reserved=totals["reserved"] or ZERO)


def check_budget(user: User, worst_case: Decimal, request_id: str) -> None:
    """Refuse a call whose worst case would take the user past their monthly limit.

    Called inside the transaction that reserves the worst case, with the user's sends serialised.
    """
    limit = limit_for(user)
    if limit is None:
        return  # no limit: the month's charges need not be summed
    current = _standing(user, limit)
    if current.committed + worst_case > limit:
        remaining = current.remaining or ZERO
        running = (
            f" ({usd(current.reserved)} is held for replies still being written)"
            if current.reserved
            else ""
        )
        raise Refused(
            errors.BUDGET_EXCEEDED,
            f"This reply could cost up to {usd(worst_case)}, and {usd(remaining)} is left of "
            f"your {usd(limit)} monthly limit{running}. Pick a cheaper model, lower "
            "the maximum reply length, or ask an admin to raise your limit.",
            request_id or None,
        )
