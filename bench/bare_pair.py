"""The floor under the labelling hot path: a bare Django + DRF + PostgreSQL endpoint pair.

Issue 8 measures the real endpoints against "a bare next/submit pair doing only the locking
select, the inserts and no auth". This is that pair, served by the same gunicorn and driven by
the same load generator (same URLs, same response fields), so the two figures compare on the
same machine at the same moment:

* next task: ``SELECT ... FOR UPDATE SKIP LOCKED`` on the first open task (breadth first, the
  same partial index), an assignment insert, the task's count, the completions;
* submit: the ranking insert, its items, the assignment's status.

No authentication, no membership or guidelines check, no validation, no gold or adaptive
overlap, no idempotency. The labeller is named by the token header's value, looked up once per
process. Not for use: a yardstick.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_load REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/load_labellers.py --labellers 32 --seconds 15 --client aiohttp \\
        --app bench.bare_pair:application
"""

from __future__ import annotations

import os
import random
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import transaction  # noqa: E402
from django.db.models import F  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.permissions import AllowAny  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from accounts.models import ApiToken  # noqa: E402
from accounts.services import hash_key  # noqa: E402
from annotation.models import (  # noqa: E402
    Assignment,
    Completion,
    Ranking,
    RankingItem,
    Task,
)

_users: dict[str, int] = {}


def _labeller_id(request) -> int:
    key = request.headers.get("Authorization", "").removeprefix("Token ")
    if key not in _users:
        _users[key] = ApiToken.objects.get(key_hash=hash_key(key)).user_id
    return _users[key]


class NextTask(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def post(self, request, campaign_id: int) -> Response:
        labeller = _labeller_id(request)
        now = timezone.now()
        with transaction.atomic():
            task = (
                Task.objects.select_for_update(skip_locked=True)
                .filter(campaign_id=campaign_id, is_gold=False)
                .filter(active_count__lt=F("target_overlap"))
                .exclude(assignments__labeller_id=labeller)
                .order_by("-active_count", "-priority", "id")
                .first()
            )
            if task is None:
                return Response(status=204)
            texts = dict(
                Completion.objects.filter(task_completions__task=task).values_list("pk", "text")
            )
            order = list(texts)
            random.shuffle(order)
            assignment = Assignment.objects.create(
                task=task,
                campaign_id=campaign_id,
                labeller_id=labeller,
                status=Assignment.Status.ASSIGNED,
                display_order=order,
                assigned_at=now,
                lease_expires_at=now + timedelta(minutes=30),
            )
            Task.objects.filter(pk=task.pk).update(active_count=F("active_count") + 1)
        return Response(
            {"id": assignment.pk, "completions": [{"id": c, "text": texts[c]} for c in order]}
        )


class Submit(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def post(self, request, assignment_id: int) -> Response:
        labeller = _labeller_id(request)
        with transaction.atomic():
            assignment = Assignment.objects.select_for_update().get(pk=assignment_id)
            ranking = Ranking.objects.create(
                assignment=assignment,
                task_id=assignment.task_id,
                campaign_id=assignment.campaign_id,
                labeller_id=labeller,
                time_spent_ms=request.data["time_spent_ms"],
            )
            RankingItem.objects.bulk_create(
                [
                    RankingItem(ranking=ranking, completion_id=i["completion"], rank=i["rank"])
                    for i in request.data["items"]
                ]
            )
            Task.objects.filter(pk=assignment.task_id).update(
                submitted_count=F("submitted_count") + 1
            )
            Assignment.objects.filter(pk=assignment.pk).update(
                status=Assignment.Status.SUBMITTED, finished_at=timezone.now()
            )
        return Response({"id": ranking.pk}, status=201)


def healthz(request) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [
    path("api/campaigns/<int:campaign_id>/next-task/", NextTask.as_view()),
    path("api/assignments/<int:assignment_id>/ranking/", Submit.as_view()),
    path("healthz", healthz),
]

settings.ROOT_URLCONF = __name__
application = get_wsgi_application()
