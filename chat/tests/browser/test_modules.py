"""The page's small pure helpers, run in the browser as the page runs them."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

pytestmark = pytest.mark.browser


def test_money_is_shown_as_the_server_wrote_it_without_float_rounding(page: Page) -> None:
    page.goto("/accounts/login/")
    shown = page.evaluate(
        """async (values) => {
          const { trimDecimal, usd } = await import("/static/chat/js/format.js");
          return values.map((value) => [trimDecimal(value), usd(value)]);
        }""",
        ["0.30240000", "1.000000", "12", "0.000000000001", "0.1000000000000000055511", "0", None],
    )
    assert shown == [
        ["0.3024", "$0.3024"],
        ["1", "$1"],
        ["12", "$12"],
        ["0.000000000001", "$0.000000000001"],
        ["0.1000000000000000055511", "$0.1000000000000000055511"],
        ["0", "$0"],
        [None, None],
    ]


def test_durations_read_naturally(page: Page) -> None:
    page.goto("/accounts/login/")
    shown = page.evaluate(
        """async (values) => {
          const { duration } = await import("/static/chat/js/format.js");
          return values.map(duration);
        }""",
        [0, 1234, 15_400, 75_000, None],
    )
    assert shown == ["0.0 s", "1.2 s", "15 s", "1 min 15 s", ""]
