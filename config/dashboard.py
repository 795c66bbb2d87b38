"""What the dashboards of both apps share: who gets in, id bounds, service errors on forms,
and the panels one app adds to another's pages.

A page of the annotation dashboard (the base app) shows what the training app adds to it
without importing it: ``DASHBOARD_PANELS`` in settings names, per page, the functions that
return a panel's context, and the page merges them. The training dashboard imports the
annotation side, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import HttpRequest
from django.utils.module_loading import import_string

from annotation import permissions
from annotation.errors import ServiceError

MAX_ID = 2**62
"""Ids above this cannot exist (and overflow PostgreSQL's bigint): such a URL is a 404."""


def _access(check, refusal: str):
    """A view decorator: anonymous users go to the login page; signed-in users for whom
    ``check(user)`` is false get 403. Each page then checks the role its action needs on its
    campaign or team."""

    def decorator(view):
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not check(request.user):
                raise DjangoPermissionDenied(refusal)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


dashboard_required = _access(
    permissions.runs_anything, "the dashboard is for those who run or review campaigns"
)
"""Campaign pages: a team role, a campaign one manages or reviews, or a permission."""
training_required = _access(
    permissions.sees_training, "training is for a team's managers and trainers"
)
"""Training pages: a team role, or the permission everywhere."""


def add_service_error(form: forms.Form, exc: ServiceError) -> None:
    """Show a service's error on the form: next to the field it names, else above the form."""
    errors = exc.errors or {None: [exc.message]}
    for field, messages in errors.items():
        for message in messages:
            form.add_error(field if field in form.fields else None, message)


@dataclass(frozen=True)
class Panel:
    """A section another app adds to a page: its template, given ``panel`` = ``context``."""

    template: str
    context: dict[str, Any]


def panels(page: str, request: HttpRequest, **objects: Any) -> dict[str, list[Panel]]:
    """``{"panels": [...]}``: what the installed apps add to ``page``, in the order of
    ``settings.DASHBOARD_PANELS[page]`` (dotted paths of functions returning a Panel or None)."""
    found = []
    for path in settings.DASHBOARD_PANELS.get(page, ()):
        panel = import_string(path)(request, **objects)
        if panel is not None:
            found.append(panel)
    return {"panels": found}
