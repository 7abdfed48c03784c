from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Create the first admin from DJANGO_SUPERUSER_USERNAME / DJANGO_SUPERUSER_PASSWORD "
        "(and optional DJANGO_SUPERUSER_EMAIL) when no admin exists yet. Safe to run at every "
        "deployment: it never changes an existing user. With --hint, only explain how."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--hint", action="store_true", help="Print how to create the first admin, if needed."
        )

    def handle(self, *args: Any, hint: bool = False, **options: Any) -> None:
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        username = os.getenv("DJANGO_SUPERUSER_USERNAME", "")
        password = os.getenv("DJANGO_SUPERUSER_PASSWORD", "")
        if hint or not (username and password):
            self.stdout.write(
                "No admin account exists yet. Create one with:\n"
                "  .venv/bin/python manage.py createsuperuser\n"
                "or, without prompts (deployments):\n"
                "  DJANGO_SUPERUSER_USERNAME=admin DJANGO_SUPERUSER_PASSWORD='...' "
                ".venv/bin/python manage.py firstadmin\n"
                "Then log in at /admin/ to manage models and prices."
            )
            return
        if User.objects.filter(username=username).exists():
            self.stderr.write(f"A user named {username!r} exists but is not an admin; not changed.")
            return
        User.objects.create_superuser(
            username=username, email=os.getenv("DJANGO_SUPERUSER_EMAIL", ""), password=password
        )
        self.stdout.write(f"Created the admin {username!r}.")
