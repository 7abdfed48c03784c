"""Images attached to questions: upload and download."""

from __future__ import annotations

from http import HTTPStatus

from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from chat import attachments
from chat.models import Attachment

from .http import AuthenticatedHttpRequest, api_login_required, json_error
from .json import not_found


@require_POST
@api_login_required
def upload_image(request: AuthenticatedHttpRequest) -> JsonResponse:
    upload = request.FILES.get("image")
    if upload is None:
        return json_error("invalid_frame", "Send the image as the 'image' field.", 400)
    try:
        image = attachments.store(request.user, upload)
    except attachments.StorageFull as exc:
        return json_error("storage_full", str(exc), HTTPStatus.BAD_REQUEST)
    except attachments.ImageRefused as exc:
        return json_error("invalid_image", str(exc), HTTPStatus.BAD_REQUEST)
    return JsonResponse(attachments.as_json(image), status=HTTPStatus.CREATED)


@require_GET
@api_login_required
def image(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    found = Attachment.objects.filter(pk=pk, owner=request.user).first()
    if found is None:
        return not_found("image")
    response = HttpResponse(bytes(found.data), content_type=found.content_type)
    response["Cache-Control"] = "private, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    return response
