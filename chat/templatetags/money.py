from __future__ import annotations

from decimal import Decimal

from django import template

from chat.billing import prices

register = template.Library()


@register.filter
def usd(amount: Decimal | None) -> str:
    """USD for people, exact: "$0.50", "$0.000408", "$1,234.56"."""
    return "—" if amount is None else prices.usd(amount)


@register.filter
def usd_text(amount: str | None) -> str:
    """A decimal string (as stored in JSON snapshots) as USD for people."""
    return "—" if not amount else prices.usd(Decimal(amount))
