from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from .models import Profile

        def create_profile(sender: type, instance: "User", created: bool, **kwargs: object) -> None:
            # Every user has a profile, so admins can set any user's limit from one list.
            if created and not kwargs.get("raw"):
                Profile.objects.get_or_create(user=instance)

        post_save.connect(create_profile, sender=get_user_model(), dispatch_uid="chat-profile")
