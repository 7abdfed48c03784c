from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from http import HTTPStatus

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template import engines
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .api.http import AuthenticatedHttpRequest, api_login_required
from .billing import budgets, usage
from .models import Charge, ChatModel

logger = logging.getLogger(__name__)


@login_required
def index(request: HttpRequest) -> HttpResponse:
    # The page checks attachments and messages against the server's limits before sending.
    limits = {
        "max_image_bytes": settings.MAX_IMAGE_BYTES,
        "max_images": settings.MAX_IMAGES_PER_MESSAGE,
        "max_message_chars": settings.MAX_MESSAGE_CHARS,
    }
    return render(request, "chat/index.html", limits)


def signup(request: HttpRequest) -> HttpResponse:
    if not settings.ALLOW_SIGNUP:
        raise Http404("Sign-up is switched off on this site.")
    if request.user.is_authenticated:
        return redirect("chat:index")
    form: UserCreationForm[User] = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat:index")
    return render(request, "registration/signup.html", {"form": form})


def model_as_json(model: ChatModel) -> dict[str, object]:
    return {
        "id": model.model_id,
        "name": model.name,
        "description": model.description,
        # Decimal strings: the browser must never turn a price into a float.
        "input_price_per_million": str(model.input_price),
        "output_price_per_million": str(model.output_price),
        "context_length": model.context_length,
        "max_output_tokens": model.max_output_tokens,
        "capabilities": model.capabilities,
    }


@require_GET
@api_login_required
def api_models(request: HttpRequest) -> JsonResponse:
    models = ChatModel.objects.filter(
        enabled=True, input_price__isnull=False, output_price__isnull=False
    )
    return JsonResponse({"models": [model_as_json(m) for m in models]})


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        logger.exception("health check: database unavailable")
        return False


async def _channel_layer_ok() -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        # The default prefix: channels_redis receives all of a process's channels of one
        # prefix through one list, and one receive at a time; under another prefix this
        # receive would wait behind the process's own (the generation control channel's),
        # which runs from start-up, and time out.
        channel = await asyncio.wait_for(layer.new_channel(), 2)
        token = uuid.uuid4().hex
        await asyncio.wait_for(layer.send(channel, {"type": "healthz", "token": token}), 2)
        message = await asyncio.wait_for(layer.receive(channel), 2)
        return message.get("token") == token
    except Exception:
        logger.exception("health check: channel layer unavailable")
        return False


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    database = await sync_to_async(_database_ok)()
    channel_layer = await _channel_layer_ok()
    ok = database and channel_layer
    return JsonResponse(
        {
            "status": "ok" if ok else "unavailable",
            "database": database,
            "channel_layer": channel_layer,
        },
        status=HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
    )


# A refused month gets a page of its own, in the site's frame.
_PERIOD_REFUSED = engines["django"].from_string(
    '{% extends "base.html" %}{% block title %}Usage \u00b7 {{ SITE_NAME }}{% endblock %}'
    '{% block content %}<h1>Usage</h1><p role="alert">{{ message }}</p>'
    "<p><a href=\"{% url 'chat:usage' %}\">This month</a></p>{% endblock %}"
)


def _period_refused(request: HttpRequest, refused: usage.PeriodRefused) -> HttpResponse:
    return HttpResponse(
        _PERIOD_REFUSED.render({"message": str(refused)}, request),
        status=HTTPStatus.BAD_REQUEST,
    )


@login_required
def usage_page(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The user's spending: this month against their limit, per model and per day."""
    try:
        period = usage.month_period(request.GET.get("month"))
    except usage.PeriodRefused as refused:
        return _period_refused(request, refused)
    charges = usage.charges_in(period, user=request.user)
    standing = budgets.standing(request.user, period.start)
    current = period.start == budgets.month_start()
    return render(
        request,
        "usage/usage.html",
        {
            "period": period,
            "month": timezone.localtime(period.start).strftime("%Y-%m"),
            "previous_month": (timezone.localtime(period.start) - timedelta(days=1)).strftime(
                "%Y-%m"
            ),
            "next_month": None if current else timezone.localtime(period.end).strftime("%Y-%m"),
            "current": current,
            "standing": standing,
            "total": usage.total(charges),
            "models": usage.by_model(charges),
            "chart": usage.bar_chart(usage.by_day(charges, period)),
            "unpriced": charges.filter(state=Charge.State.SETTLED, cost__isnull=True).count(),
        },
    )


@login_required
def usage_csv(request: HttpRequest) -> HttpResponse:
    try:
        period = usage.month_period(request.GET.get("month"))
    except usage.PeriodRefused as refused:
        return HttpResponse(
            f"{refused}\n", content_type="text/plain; charset=utf-8", status=HTTPStatus.BAD_REQUEST
        )
    month = timezone.localtime(period.start).strftime("%Y-%m")
    response = HttpResponse(
        usage.csv_of(usage.charges_in(period, user=request.user)),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="chutes-chat-usage-{month}.csv"'
    return response
