"""Money and prompt rules at their edges: a cost exactly halfway between two twelfth decimals,
whatever decimal context the thread has, and a question's images in the prompt (as image parts
for a model that sees, as a note for one that does not) with the tokens they are sized at.
Each test pins a rule a mutation of the code showed unprotected (docs/reliability.md,
"Mutation testing")."""

from __future__ import annotations

import base64
import decimal
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from chat.actions import conversations, prompts
from chat.billing import prices
from chat.models import Attachment, ChatModel, Conversation, Message
from chat.protocol import Params

# Costs ----------------------------------------------------------------------------------------

# A price at which one token costs half of a twelfth decimal: 0.0000005 / 1M = 5e-13.
HALF_QUANTUM_PRICE = Decimal("0.0000005")


@pytest.mark.parametrize(
    "rounding",
    [decimal.ROUND_HALF_EVEN, decimal.ROUND_HALF_UP, decimal.ROUND_DOWN, decimal.ROUND_CEILING],
)
def test_a_cost_halfway_between_twelfth_decimals_rounds_to_the_even_one_in_any_decimal_context(
    rounding: str,
) -> None:
    with decimal.localcontext(rounding=rounding):
        # 0.5e-12, 1.5e-12, 2.5e-12 and 3.5e-12 USD.
        assert prices.cost(1, 0, HALF_QUANTUM_PRICE, Decimal(0)) == Decimal("0E-12")
        assert prices.cost(3, 0, HALF_QUANTUM_PRICE, Decimal(0)) == Decimal("2E-12")
        assert prices.cost(5, 0, HALF_QUANTUM_PRICE, Decimal(0)) == Decimal("2E-12")
        assert prices.cost(0, 7, Decimal(0), HALF_QUANTUM_PRICE) == Decimal("4E-12")


# Images in the prompt ------------------------------------------------------------------------

QUESTION = "What is this?"
# 1 uppercase (0.55), 9 lowercase (0.26), 2 spaces (0.05), "?" (0.46): 3.45, so 4 tokens, and
# 4 of overhead for the message.
QUESTION_TOKENS = 8
IMAGE_BYTES = b"\x89PNG\r\n\x1a\n not really a picture"


@pytest.fixture
def user(db: None) -> User:
    """A user without a password: hashing one takes most of a test's second."""
    return get_user_model().objects.create(username="member")


def _model(*, vision: bool) -> ChatModel:
    return ChatModel(
        model_id="org/model",
        name="Model",
        context_length=100_000,
        max_output_tokens=1000,
        vision=vision,
    )


def _question_with_an_image(user: User) -> tuple[Conversation, list[Message]]:
    conversation = Conversation.objects.create(owner=user, title="t", has_images=True)
    question = Message.objects.create(
        conversation=conversation, user=user, role=Message.Role.USER, content=QUESTION
    )
    # 56 x 28 pixels is 2 x 1 patches of 28: sized at the minimum an image is counted at.
    Attachment.objects.create(
        owner=user,
        message=question,
        content_type="image/png",
        data=IMAGE_BYTES,
        size=len(IMAGE_BYTES),
        width=56,
        height=28,
    )
    return conversation, conversations.active_path(conversation)


def test_a_questions_images_go_to_a_vision_model_as_image_parts_after_its_text(
    user: User,
) -> None:
    conversation, history = _question_with_an_image(user)
    body, estimate = prompts.build_prompt(
        conversation, history, _model(vision=True), Params(max_tokens=100), "rid"
    )
    url = "data:image/png;base64," + base64.b64encode(IMAGE_BYTES).decode("ascii")
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]
    assert prompts.MIN_IMAGE_TOKENS == 64
    assert estimate == QUESTION_TOKENS + 64


def test_a_model_that_cannot_see_gets_a_note_of_the_images_in_their_place(user: User) -> None:
    conversation, history = _question_with_an_image(user)
    body, estimate = prompts.build_prompt(
        conversation, history, _model(vision=False), Params(max_tokens=100), "rid"
    )
    note = f"{QUESTION}\n\n[1 image(s) attached, not shown to this model]"
    assert body["messages"] == [{"role": "user", "content": note}]
    assert estimate == prices.estimate_tokens(note) + prices.MESSAGE_OVERHEAD_TOKENS
