"""The usage page and its CSV answer a month they cannot show with a clear 400, never a 500;
the first and last months they can show work in any time zone."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

REFUSED = [
    "9999-12",  # its end would be in the year 10000
    "0001-01",  # the month before it would be in the year 0
    "10000-01",
    "2024-13",
    "2024-00",
    "2024-1",
    "march",
    "2024-03-01",
]
ZONES = ["UTC", "Pacific/Kiritimati", "Etc/GMT+12"]


@pytest.fixture(autouse=True)
def quick_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.mark.parametrize("month", REFUSED)
def test_a_month_the_page_cannot_show_is_a_400_page_saying_why(
    user_client: Client, month: str
) -> None:
    response = user_client.get("/usage/", {"month": month})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    page = response.content.decode()
    assert "There is no usage report for" in page
    assert "Months are written YYYY-MM, from 1970-01 to 9998-12." in page
    assert 'href="/usage/"' in page


@pytest.mark.parametrize("month", REFUSED)
def test_a_month_the_csv_cannot_cover_is_a_400_saying_why(user_client: Client, month: str) -> None:
    response = user_client.get("/usage.csv", {"month": month})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "Months are written YYYY-MM" in response.content.decode()


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("month", ["1970-01", "9998-12"])
def test_the_first_and_last_months_are_shown_in_any_time_zone(
    user_client: Client, settings, zone: str, month: str
) -> None:
    settings.TIME_ZONE = zone
    page = user_client.get("/usage/", {"month": month})
    assert page.status_code == HTTPStatus.OK
    assert f"?month={month}" in page.content.decode()  # the CSV link of the month shown
    csv = user_client.get("/usage.csv", {"month": month})
    assert csv.status_code == HTTPStatus.OK
    assert f"chutes-chat-usage-{month}.csv" in csv["Content-Disposition"]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(
    ("start", "end"), [("9999-12-31", "9999-12-31"), ("0001-01-01", "0001-01-01")]
)
def test_the_admin_dashboard_shows_this_month_for_days_it_cannot_cover(
    admin_client: Client, settings, zone: str, start: str, end: str
) -> None:
    settings.TIME_ZONE = zone
    response = admin_client.get("/admin/chat/usagereport/", {"start": start, "end": end})
    assert response.status_code == HTTPStatus.OK
