"""Money: prices and token estimates (`prices.py`), monthly limits and reservations
(`budgets.py`), settling a reply's charge (`settlement.py`) and spending reports (`usage.py`).
Amounts are Decimal throughout; the money column type is `chat.fields.MoneyField`, and the
`reconcile` management command compares settled charges with what Lava billed."""
