"""Create the first admin from the environment, once: the step after ``migrate`` in a deployment.

docker-compose.yml's one-shot ``migrate`` service runs ``migrate`` then this command, so a new
stack can be logged into without a shell in a container. Idempotent: an existing user of that
name is left as it is (its password is never reset from the environment).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction


def _password() -> str:
    """``DJANGO_ADMIN_PASSWORD``, or the contents of ``DJANGO_ADMIN_PASSWORD_FILE`` (a Docker or
    Kubernetes secret mounted as a file)."""
    path = os.environ.get("DJANGO_ADMIN_PASSWORD_FILE", "")
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise CommandError(f"DJANGO_ADMIN_PASSWORD_FILE={path}: {exc.strerror}") from exc
    return os.environ.get("DJANGO_ADMIN_PASSWORD", "")


class Command(BaseCommand):
    help = (
        "Create the first admin (staff and superuser) from DJANGO_ADMIN_USERNAME, "
        "DJANGO_ADMIN_PASSWORD (or DJANGO_ADMIN_PASSWORD_FILE) and DJANGO_ADMIN_EMAIL, "
        "unless a user of that name exists."
    )

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        username = os.environ.get("DJANGO_ADMIN_USERNAME", "").strip()
        if not username:
            self.stdout.write(
                "DJANGO_ADMIN_USERNAME is not set: no admin created "
                "(create one later with `createsuperuser`)."
            )
            return
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"admin {username!r} exists: left as it is.")
            return
        password = _password()
        if not password:
            raise CommandError(
                f"DJANGO_ADMIN_USERNAME={username} needs DJANGO_ADMIN_PASSWORD "
                "or DJANGO_ADMIN_PASSWORD_FILE"
            )
        user = User(username=username, email=os.environ.get("DJANGO_ADMIN_EMAIL", ""))
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError("DJANGO_ADMIN_PASSWORD: " + " ".join(exc.messages)) from exc
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(self.style.SUCCESS(f"admin {username!r} created."))
