"""Presets a user may apply: their own and those an admin published."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Q

from chat import errors
from chat.errors import Refused
from chat.models import (
    Preset,
)


def usable_preset(user: User, preset_id: int, request_id: str) -> Preset:
    preset = (
        Preset.objects.filter(Q(owner=user) | Q(owner__isnull=True), pk=preset_id)
        .select_related("model")
        .first()
    )
    if preset is None:
        raise Refused(errors.NOT_FOUND, "No such preset.", request_id)
    return preset
