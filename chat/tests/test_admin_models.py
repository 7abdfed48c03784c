from __future__ import annotations

from decimal import Decimal
from http import HTTPStatus
from typing import Any

import pytest
from django.test import Client

from chat.models import ChatModel, PriceChange

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/chat/chatmodel/"


def change_form_data(model: ChatModel, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "model_id": model.model_id,
        "name": model.name,
        "description": model.description,
        "enabled": "on" if model.enabled else "",
        "sort_order": model.sort_order,
        "input_price": "" if model.input_price is None else str(model.input_price),
        "output_price": "" if model.output_price is None else str(model.output_price),
        "context_length": model.context_length,
        "max_output_tokens": model.max_output_tokens,
        "reasoning": "on" if model.reasoning else "",
        "vision": "on" if model.vision else "",
        "history-TOTAL_FORMS": "0",
        "history-INITIAL_FORMS": "0",
        "history-MIN_NUM_FORMS": "0",
        "history-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v != ""}


def changelist_data(models: list[ChatModel], **overrides: dict[str, Any]) -> dict[str, Any]:
    """The POST the editable changelist sends; overrides are keyed by model_id."""
    data: dict[str, Any] = {
        "form-TOTAL_FORMS": str(len(models)),
        "form-INITIAL_FORMS": str(len(models)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for i, m in enumerate(models):
        row = {
            "id": m.pk,
            "enabled": "on" if m.enabled else "",
            "input_price": "" if m.input_price is None else str(m.input_price),
            "output_price": "" if m.output_price is None else str(m.output_price),
            "sort_order": m.sort_order,
        }
        row.update(overrides.get(m.model_id, {}))
        for key, value in row.items():
            if value != "":
                data[f"form-{i}-{key}"] = value
    return data


@pytest.fixture
def qwen() -> ChatModel:
    return ChatModel.objects.get(model_id="Qwen/Qwen3-32B")


def change_url(model: ChatModel) -> str:
    return f"/admin/chat/chatmodel/{model.pk}/change/"


def test_a_price_edit_writes_history_with_the_editor_and_shows_in_the_api_at_once(
    admin_client: Client, admin_user, user_client: Client, qwen: ChatModel
) -> None:
    response = admin_client.post(
        change_url(qwen), change_form_data(qwen, input_price="0.5", output_price="1.25")
    )
    assert response.status_code == HTTPStatus.FOUND, response.content.decode()[:2000]

    change = PriceChange.objects.filter(chat_model=qwen, source="admin").get()
    assert change.changed_by == admin_user
    assert change.old_input_price == Decimal("0.027216")
    assert change.new_input_price == Decimal("0.5")
    assert change.old_output_price == Decimal("0.027216")
    assert change.new_output_price == Decimal("1.25")

    listed = next(
        m for m in user_client.get("/api/models").json()["models"] if m["id"] == qwen.model_id
    )
    assert Decimal(listed["input_price_per_million"]) == Decimal("0.5")
    assert Decimal(listed["output_price_per_million"]) == Decimal("1.25")


def test_an_edit_that_changes_no_price_writes_no_history(
    admin_client: Client, qwen: ChatModel
) -> None:
    response = admin_client.post(change_url(qwen), change_form_data(qwen, name="Qwen3 32B (new)"))
    assert response.status_code == HTTPStatus.FOUND
    assert not PriceChange.objects.filter(chat_model=qwen, source="admin").exists()


def test_prices_and_availability_are_edited_in_the_changelist(
    admin_client: Client, admin_user, qwen: ChatModel
) -> None:
    nemo = ChatModel.objects.get(model_id="unsloth/Mistral-Nemo-Instruct-2407")
    data = changelist_data(
        [qwen, nemo],
        **{
            qwen.model_id: {"output_price": "0.1"},
            nemo.model_id: {"enabled": ""},
        },
    )
    response = admin_client.post(CHANGELIST, data)
    assert response.status_code == HTTPStatus.FOUND, response.content.decode()[:3000]
    qwen.refresh_from_db()
    nemo.refresh_from_db()
    assert qwen.output_price == Decimal("0.1")
    assert not nemo.enabled
    assert PriceChange.objects.get(chat_model=nemo, source="admin").changed_by == admin_user
    assert PriceChange.objects.get(chat_model=qwen, source="admin").new_output_price == Decimal(
        "0.1"
    )


def test_a_negative_price_is_refused(admin_client: Client, qwen: ChatModel) -> None:
    response = admin_client.post(change_url(qwen), change_form_data(qwen, input_price="-0.01"))
    assert response.status_code == HTTPStatus.OK
    assert "greater than or equal to 0" in response.content.decode()
    qwen.refresh_from_db()
    assert qwen.input_price == Decimal("0.027216")


def test_a_negative_price_is_refused_in_the_changelist(
    admin_client: Client, qwen: ChatModel
) -> None:
    data = changelist_data([qwen], **{qwen.model_id: {"output_price": "-1"}})
    response = admin_client.post(CHANGELIST, data)
    assert response.status_code == HTTPStatus.OK
    assert "greater than or equal to 0" in response.content.decode()
    qwen.refresh_from_db()
    assert qwen.output_price == Decimal("0.027216")


def test_a_model_cannot_be_enabled_without_both_prices(
    admin_client: Client, qwen: ChatModel
) -> None:
    response = admin_client.post(change_url(qwen), change_form_data(qwen, output_price=""))
    assert response.status_code == HTTPStatus.OK
    assert "Set the output price before enabling this model" in response.content.decode()
    qwen.refresh_from_db()
    assert qwen.output_price == Decimal("0.027216")


def test_clearing_a_price_in_the_changelist_of_an_enabled_model_is_refused(
    admin_client: Client, qwen: ChatModel
) -> None:
    data = changelist_data([qwen], **{qwen.model_id: {"input_price": ""}})
    response = admin_client.post(CHANGELIST, data)
    assert response.status_code == HTTPStatus.OK
    assert "Set the input price before enabling this model" in response.content.decode()
    qwen.refresh_from_db()
    assert qwen.input_price == Decimal("0.027216")


def test_a_free_model_with_explicit_zero_prices_can_be_enabled(
    admin_client: Client, qwen: ChatModel
) -> None:
    response = admin_client.post(
        change_url(qwen), change_form_data(qwen, input_price="0", output_price="0")
    )
    assert response.status_code == HTTPStatus.FOUND
    qwen.refresh_from_db()
    assert qwen.enabled
    assert qwen.input_price == Decimal(0)


def test_a_malformed_model_id_is_refused(admin_client: Client) -> None:
    for bad in ("no spaces/allowed", "two/slashes/here", "/leading", "trailing/", "emoji/🙂"):
        response = admin_client.post(
            "/admin/chat/chatmodel/add/",
            change_form_data(
                ChatModel(model_id=bad, name="Bad", context_length=1000, max_output_tokens=100),
            ),
        )
        assert response.status_code == HTTPStatus.OK, bad
        assert "Enter a Chutes model id" in response.content.decode(), bad
    assert not ChatModel.objects.filter(name="Bad").exists()


def test_a_new_well_formed_model_is_added_with_a_history_row(
    admin_client: Client, admin_user
) -> None:
    new = ChatModel(
        model_id="moonshotai/Kimi-K2-Instruct-TEE",
        name="Kimi K2",
        enabled=True,
        input_price=Decimal("0.3"),
        output_price=Decimal("1.2"),
        context_length=131072,
        max_output_tokens=16384,
    )
    response = admin_client.post("/admin/chat/chatmodel/add/", change_form_data(new))
    assert response.status_code == HTTPStatus.FOUND, response.content.decode()[:2000]
    created = ChatModel.objects.get(model_id="moonshotai/Kimi-K2-Instruct-TEE")
    change = PriceChange.objects.get(chat_model=created)
    assert (change.old_enabled, change.new_enabled) == (None, True)
    assert change.changed_by == admin_user


def test_max_output_cannot_exceed_the_context(admin_client: Client, qwen: ChatModel) -> None:
    response = admin_client.post(
        change_url(qwen), change_form_data(qwen, context_length=1000, max_output_tokens=2000)
    )
    assert response.status_code == HTTPStatus.OK
    assert "cannot exceed the context length" in response.content.decode()


def test_bulk_disable_and_enable_record_history(
    admin_client: Client, admin_user, qwen: ChatModel
) -> None:
    response = admin_client.post(
        CHANGELIST, {"action": "disable_models", "_selected_action": [qwen.pk]}
    )
    assert response.status_code == HTTPStatus.FOUND
    qwen.refresh_from_db()
    assert not qwen.enabled

    response = admin_client.post(
        CHANGELIST, {"action": "enable_models", "_selected_action": [qwen.pk]}
    )
    assert response.status_code == HTTPStatus.FOUND
    qwen.refresh_from_db()
    assert qwen.enabled
    changes = PriceChange.objects.filter(chat_model=qwen, source="action").order_by("id")
    assert [(c.old_enabled, c.new_enabled) for c in changes] == [(True, False), (False, True)]
    assert all(c.changed_by == admin_user for c in changes)


def test_bulk_enable_refuses_unpriced_models_with_a_message(
    admin_client: Client, qwen: ChatModel
) -> None:
    ChatModel.objects.filter(pk=qwen.pk).update(enabled=False, output_price=None)
    response = admin_client.post(
        CHANGELIST, {"action": "enable_models", "_selected_action": [qwen.pk]}, follow=True
    )
    assert "Not enabled (set both prices first" in response.content.decode()
    qwen.refresh_from_db()
    assert not qwen.enabled


def test_the_change_page_shows_the_price_history_read_only(
    admin_client: Client, qwen: ChatModel
) -> None:
    page = admin_client.get(change_url(qwen)).content.decode()
    assert "price and availability change" in page.lower()
    assert "initial catalogue" in page
    assert 'name="history-0-new_input_price"' not in page


def test_changelist_search_and_filter(admin_client: Client) -> None:
    page = admin_client.get(CHANGELIST, {"q": "gemma"}).content.decode()
    assert "Gemma 3 27B" in page
    assert "Qwen3 32B" not in page
    page = admin_client.get(CHANGELIST, {"vision__exact": "1"}).content.decode()
    assert "Qwen2.5 VL 32B" in page
    assert "Gemma 3 27B" not in page


def test_conversations_and_messages_are_read_only_for_staff(admin_client: Client) -> None:
    assert admin_client.get("/admin/chat/conversation/").status_code == HTTPStatus.OK
    assert admin_client.get("/admin/chat/message/").status_code == HTTPStatus.OK
    assert admin_client.get("/admin/chat/message/add/").status_code == HTTPStatus.FORBIDDEN


@pytest.mark.parametrize(
    "params",
    ['{"max_tokens": -1000000000}', '{"max_tokens": "8192"}', '{"temperature": 9}', '{"x": 1}'],
)
def test_a_preset_saved_in_the_admin_goes_through_the_params_check(
    admin_client: Client, params: str
) -> None:
    from chat.models import Preset

    response = admin_client.post(
        "/admin/chat/preset/add/",
        {"name": "Bad", "owner": "", "model": "", "system_prompt": "", "params": params},
    )
    assert response.status_code == HTTPStatus.OK  # the form again, with the error
    assert "params." in response.content.decode()
    assert not Preset.objects.filter(name="Bad").exists()
    good = admin_client.post(
        "/admin/chat/preset/add/",
        {"name": "Good", "owner": "", "model": "", "system_prompt": "", "params": '{"top_p": 1}'},
    )
    assert good.status_code == HTTPStatus.FOUND
    assert Preset.objects.get(name="Good").params == {"top_p": 1.0}
