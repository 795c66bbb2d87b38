"""``/healthz``: ready to serve, for load balancers and docker-compose health checks.

200 ``{"status": "ok"}`` only when this process can really serve a labeller: the database
answers, every migration is applied (a web container that started before the ``migrate``
service finished is not ready), and in production the collected static files' manifest is
there (without it every page would fail to render). Otherwise 503 with the failing check's
name; the details (hosts, errors) go to the log, never to anonymous callers.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.staticfiles.storage import staticfiles_storage
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

# Once a process has seen every migration applied it need not look again: migrations only move
# forward while it runs (a rollback restarts the containers).
_migrated = False


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _migrations() -> None:
    global _migrated
    if _migrated:
        return
    executor = MigrationExecutor(connection)
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        raise RuntimeError(f"{len(pending)} migrations not applied, first {pending[0][0]}")
    _migrated = True


def _static() -> None:
    if settings.STORAGES["staticfiles"]["BACKEND"] == "config.static.Storage":
        staticfiles_storage.url("css/app.css")  # raises when collectstatic has not run


CHECKS = (("database", _database), ("migrations", _migrations), ("static", _static))


def healthz(request: HttpRequest) -> JsonResponse:
    for name, check in CHECKS:
        try:
            check()
        except Exception:
            logger.warning("healthz: %s check failed", name, exc_info=True)
            return JsonResponse({"status": "unavailable", "failed": name}, status=503)
    return JsonResponse({"status": "ok"})
