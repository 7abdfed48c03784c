"""Spending reports for users and admins: totals per model, user and day, and a bar chart drawn
on the server (plain SVG, so no script is needed and the page stays within its CSP)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from chat.models import Charge

ZERO = Decimal(0)


@dataclass(frozen=True)
class Period:
    start: datetime  # inclusive
    end: datetime  # exclusive

    @property
    def days(self) -> list[date]:
        first = timezone.localtime(self.start).date()
        last = timezone.localtime(self.end - timedelta(microseconds=1)).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]


# Reports cover these years: the page links to the month before and after the one shown, and
# Python's dates end at 9999-12-31 (a month of 9999-12 has no end to compute).
FIRST_YEAR = 1970
LAST_YEAR = 9998
MONTH_RE = re.compile(r"^([0-9]{4})-([0-9]{2})$")


class PeriodRefused(ValueError):
    """A month the reports cannot show; the message says why, for the user."""


def month_period(month: str | None) -> Period:
    """The calendar month `YYYY-MM` (server time zone); the current month when absent.
    PeriodRefused when it is not such a month from FIRST_YEAR to LAST_YEAR."""
    from .budgets import month_start, next_month_start

    start = month_start()
    if month:
        match = MONTH_RE.match(month)
        year, number = (int(match[1]), int(match[2])) if match else (0, 0)
        if not (FIRST_YEAR <= year <= LAST_YEAR and 1 <= number <= 12):
            raise PeriodRefused(
                f"There is no usage report for \u201c{month[:20]}\u201d. Months are written "
                f"YYYY-MM, from {FIRST_YEAR}-01 to {LAST_YEAR}-12."
            )
        start = timezone.make_aware(datetime(year, number, 1))
    return Period(start, next_month_start(start))


def day_period(first: str | None, last: str | None) -> Period:
    """Days `first` to `last` inclusive (YYYY-MM-DD); the current month when absent or bad."""
    try:
        start_day = date.fromisoformat(first or "")
        end_day = date.fromisoformat(last or "")
    except ValueError:
        return month_period(None)
    if not all(FIRST_YEAR <= day.year <= LAST_YEAR for day in (start_day, end_day)):
        return month_period(None)
    if end_day < start_day:
        start_day, end_day = end_day, start_day
    start = timezone.make_aware(datetime(start_day.year, start_day.month, start_day.day))
    end = timezone.make_aware(datetime(end_day.year, end_day.month, end_day.day)) + timedelta(1)
    return Period(start, end)


def charges_in(period: Period, **filters: Any) -> QuerySet[Charge]:
    return Charge.objects.filter(created_at__gte=period.start, created_at__lt=period.end, **filters)


def billed(charges: QuerySet[Charge]) -> QuerySet[Charge]:
    """Charges that ended with a price: what was actually billed."""
    return charges.filter(state=Charge.State.SETTLED, cost__isnull=False)


def total(charges: QuerySet[Charge]) -> Decimal:
    return billed(charges).aggregate(total=Sum("cost"))["total"] or ZERO


def by_model(charges: QuerySet[Charge]) -> list[dict[str, Any]]:
    rows = (
        billed(charges)
        .values("model_id")
        .annotate(
            calls=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            estimated=Count("id", filter=Q(estimated=True)),
            cost=Sum("cost"),
        )
        .order_by("-cost", "model_id")
    )
    # values() yields plain dicts (the stubs type them as TypedDicts, which callers cannot extend).
    return cast("list[dict[str, Any]]", list(rows))


def by_user(charges: QuerySet[Charge]) -> list[dict[str, Any]]:
    rows = (
        billed(charges)
        .values("user_id", "user__username")
        .annotate(calls=Count("id"), cost=Sum("cost"))
        .order_by("-cost", "user__username")
    )
    # values() yields plain dicts (the stubs type them as TypedDicts, which callers cannot extend).
    return cast("list[dict[str, Any]]", list(rows))


def by_day(charges: QuerySet[Charge], period: Period) -> list[tuple[date, Decimal]]:
    """Cost per day of the period, days without spending included as zero."""
    sums = {
        row["day"]: row["cost"]
        for row in billed(charges)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(cost=Sum("cost"))
    }
    return [(day, sums.get(day) or ZERO) for day in period.days]


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    label: str
    value: Decimal
    show_label: bool


CHART_WIDTH = 720
CHART_HEIGHT = 180


def bar_chart(points: Iterable[tuple[date, Decimal]]) -> dict[str, Any]:
    """Geometry for an SVG bar chart of daily spend (heights relative to the highest day)."""
    points = list(points)
    highest = max((value for _, value in points), default=ZERO)
    slot = CHART_WIDTH // max(len(points), 1)
    bars = []
    for index, (day, value) in enumerate(points):
        height = int(value / highest * (CHART_HEIGHT - 20)) if highest else 0
        if value and height < 1:
            height = 1
        bars.append(
            Bar(
                x=index * slot + 1,
                y=CHART_HEIGHT - 20 - height,
                width=max(slot - 2, 1),
                height=height,
                label=day.strftime("%d"),
                value=value,
                show_label=len(points) <= 16 or index % 5 == 0,
            )
        )
    return {"bars": bars, "width": CHART_WIDTH, "height": CHART_HEIGHT, "highest": highest}


CSV_COLUMNS = [
    "time",
    "kind",
    "model",
    "conversation",
    "prompt_tokens",
    "completion_tokens",
    "estimated",
    "input_price_per_million",
    "output_price_per_million",
    "cost_usd",
    "lava_request_id",
]


def csv_of(charges: QuerySet[Charge]) -> str:
    """Every billed call of the period, one row each; the cost column sums to the page total."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for charge in billed(charges).order_by("created_at", "id"):
        writer.writerow(
            [
                timezone.localtime(charge.created_at).isoformat(),
                charge.kind,
                charge.model_id,
                charge.conversation_id or "",
                charge.prompt_tokens,
                charge.completion_tokens,
                "yes" if charge.estimated else "no",
                _plain(charge.input_price),
                _plain(charge.output_price),
                _plain(charge.cost),
                _cell(charge.lava_request_id),
            ]
        )
    return out.getvalue()


def _plain(amount: Decimal | None) -> str:
    return "" if amount is None else format(amount, "f")


def _cell(text: str) -> str:
    """Text from outside (the upstream's ids) must not read as a spreadsheet formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
