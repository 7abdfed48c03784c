from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from chat.models import Charge
from chat.upstream.errors import UpstreamError
from chat.upstream.lava import fetch_request_cost
from chat.upstream.settings import config_from_settings


class Command(BaseCommand):
    help = (
        "Compare our cost of recent replies with what Lava billed (GET /v1/requests/{id}) and "
        "report every difference beyond the tolerance. Lava's figure is stored on each charge "
        "and shown in the admin's usage dashboard."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--hours", type=float, default=24, help="How far back (default 24).")
        parser.add_argument(
            "--tolerance",
            type=Decimal,
            default=None,
            help="USD; default RECONCILE_TOLERANCE_USD.",
        )
        parser.add_argument(
            "--all", action="store_true", help="Also re-check charges reconciled before."
        )

    def handle(self, *args: Any, hours: float, tolerance: Decimal | None, **options: Any) -> None:
        tolerance = settings.RECONCILE_TOLERANCE_USD if tolerance is None else tolerance
        since = timezone.now() - timedelta(hours=hours)
        charges = Charge.objects.filter(state=Charge.State.SETTLED, created_at__gte=since).exclude(
            lava_request_id=""
        )
        if not options["all"]:
            charges = charges.filter(reconciled_at__isnull=True)
        checked = differences = failures = 0
        config = config_from_settings()
        for charge in charges.select_related("user").order_by("created_at"):
            try:
                billed = async_to_sync(fetch_request_cost)(charge.lava_request_id, config=config)
            except UpstreamError as exc:
                failures += 1
                self.stderr.write(f"{charge.lava_request_id}: could not fetch ({exc.message})")
                continue
            checked += 1
            charge.lava_cost = billed.total_cost
            charge.reconciled_at = timezone.now()
            charge.save(update_fields=["lava_cost", "reconciled_at"])
            ours = charge.cost if charge.cost is not None else Decimal(0)
            if abs(billed.total_cost - ours) > tolerance:
                differences += 1
                self.stdout.write(
                    f"DIFFERENCE {charge.lava_request_id} user={charge.user.get_username()} "
                    f"model={charge.model_id} ours={charge.cost} lava={billed.total_cost} "
                    f"delta={billed.total_cost - ours}"
                )
        self.stdout.write(
            f"Checked {checked} call(s): {differences} difference(s) beyond ${tolerance}, "
            f"{failures} could not be fetched."
        )
