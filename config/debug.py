"""What debug pages may show: secrets masked (``DEFAULT_EXCEPTION_REPORTER_FILTER``).

Development runs with DEBUG on, so anyone who reaches the port and makes a request fail sees
the settings, the request's environment (under ``runserver`` the process's environment
variables) and every frame's local variables. Django masks names matching
API|TOKEN|KEY|SECRET|PASS|SIGNATURE; the broker, cache and database URLs hold passwords under
other names. This filter masks those too, and the password of any URL with credentials
(``redis://:pw@host`` → ``redis://:********@host``), in settings, the environment and frame
variables alike; and it applies ``sensitive_variables``/``sensitive_post_parameters`` (the
login form's password) under DEBUG too, where Django's own filter steps aside.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

CREDENTIALS = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/?#@]*:)(?P<password>[^\s/?#@]*)@", re.IGNORECASE
)
"""A URL's ``user:password@``: the password is masked."""
QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token)=)[^&#\s]*", re.I)
"""A password in a URL's query (``?password=``, as libpq allows)."""


def mask_credentials(text: str, substitute: str = "********") -> str:
    """``text`` with the passwords of the URLs in it replaced by ``substitute``."""
    text = CREDENTIALS.sub(lambda m: f"{m['head']}{substitute}@", text)
    return QUERY_SECRET.sub(lambda m: f"{m['head']}{substitute}", text)


class SecretsExceptionReporterFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE"
        # The broker, result backend and cache URLs (REDIS_URL) and what DATABASE_URL becomes.
        "|BROKER|RESULT_BACKEND|REDIS|DATABASE|CACHES|DSN",
        flags=re.IGNORECASE,
    )

    def is_active(self, request) -> bool:
        return True

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)  # recurses here for each item
        if isinstance(cleansed, str):
            return mask_credentials(cleansed, self.cleansed_substitute)
        return cleansed

    def get_traceback_frame_variables(self, request, tb_frame) -> list[tuple[str, Any]]:
        """Frame variables as Django shows them (DEBUG pages show them all), with the
        passwords of URLs in text, lists and dicts masked."""
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [(name, self._masked(value)) for name, value in variables]

    def _masked(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return mask_credentials(value, self.cleansed_substitute)
        if depth > 3:
            return value
        if type(value) is dict:
            return {k: self._masked(v, depth + 1) for k, v in value.items()}
        if type(value) in (list, tuple):
            return type(value)(self._masked(v, depth + 1) for v in value)
        return value
