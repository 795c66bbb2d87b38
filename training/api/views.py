"""Training API: admins create, follow and cancel jobs, read model versions, and run the RLHF
loop round by round."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import permissions
from annotation import selectors as annotation_selectors
from annotation.api.parsers import LimitedJSONParser
from annotation.api.serializers import CampaignFilterSerializer
from annotation.api.views import _int, _paginated, _query, _valid
from annotation.errors import InvalidInput, NotFound
from training import rounds, selectors, services
from training.api import serializers as s
from training.jobs import KINDS, acquisition, lifecycle
from training.models import Round, TrainingJob

RETRY_AFTER_SECONDS = 30


class SeesTraining(BasePermission):
    """A team's managers and trainers (or whoever holds the permission everywhere); everyone
    else 403. Each object is then scoped to the user's teams (404 for another team's)."""

    message = "training is for a team's managers and trainers"

    def has_permission(self, request, view) -> bool:
        return permissions.sees_training(request.user)


def _created(job: TrainingJob) -> Response:
    """201 with the job; 503 with Retry-After when the broker did not take it (the job is kept
    and the sweep enqueues it once the broker answers)."""
    data = s.TrainingJobSerializer(job).data
    if job.waiting_for_queue:
        return Response(
            {**data, "detail": "the job is stored but waits for the queue: the broker is "
             "unreachable; it is enqueued as soon as the broker answers"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )  # fmt: skip
    return Response(data, status=status.HTTP_201_CREATED)


def _create(request: Request, kind: str, data: dict, **fields) -> Response:
    job = lifecycle.job_create(
        kind, KINDS[kind].Request(created_by=request.user, **data, **fields), from_form=True
    )
    job.refresh_from_db()
    return _created(job)


class TrainingJobViewSet(viewsets.ViewSet):
    lookup_value_regex = "[0-9]+"
    permission_classes = [SeesTraining]
    pagination_class = PageNumberPagination

    def _job(self, request: Request, pk) -> TrainingJob:
        return selectors.training_job_get(user=request.user, job_id=_int(pk, "id"))

    @extend_schema(responses=s.TrainingJobSerializer(many=True))
    def list(self, request: Request) -> Response:
        jobs = selectors.training_job_list(user=request.user)
        return _paginated(request, self, jobs, s.TrainingJobSerializer)

    @extend_schema(responses=s.TrainingJobSerializer)
    def retrieve(self, request: Request, pk=None) -> Response:
        job = self._job(request, pk)
        return Response(s.TrainingJobSerializer(job).data)

    @extend_schema(
        request=s.job_create_schema(),
        responses={201: s.TrainingJobSerializer, 503: s.TrainingJobSerializer},
    )
    def create(self, request: Request) -> Response:
        """Queue a job; the body's fields are those of its ``kind``."""
        if not permissions.trains_anywhere(request.user):
            raise PermissionDenied("starting training needs the trainer role in a team")
        kind = _valid(s.JobKindSerializer, request)["kind"]
        data = _valid(s.job_create_serializer(kind), request)
        data.pop("kind")
        return _create(request, kind, data)

    @extend_schema(
        request=s.job_create_schema(),
        responses={200: OpenApiResponse(description="the memory plan: preflight, fits")},
    )
    @action(detail=False, methods=["post"])
    def plan(self, request: Request) -> Response:
        """Will this job fit? The same body as a create; nothing is queued. Answers the memory
        plan (GB per GPU by part, the peak, what would make it fit) whether it fits or not;
        other invalid input answers 400 as a create would."""
        if not permissions.trains_anywhere(request.user):
            raise PermissionDenied("planning training needs the trainer role in a team")
        kind = _valid(s.JobKindSerializer, request)["kind"]
        data = _valid(s.job_create_serializer(kind), request)
        data.pop("kind")
        return Response(
            lifecycle.job_plan(kind, KINDS[kind].Request(created_by=request.user, **data))
        )

    @extend_schema(
        parameters=[s.MetricsQuerySerializer], responses=s.JobMetricSerializer(many=True)
    )
    @action(detail=True, methods=["get"])
    def metrics(self, request: Request, pk=None) -> Response:
        """The job's metrics per step; ``?after=<step>`` returns only newer ones (polling)."""
        job = self._job(request, pk)
        after = _query(s.MetricsQuerySerializer, request).get("after")
        # Clamped to what the step column holds: a step past the last one has no metrics.
        after = None if after is None else min(after, 2**31 - 1)
        rows = selectors.job_metrics(job=job, after_step=after)
        return Response(s.JobMetricSerializer(rows, many=True).data)

    @extend_schema(request=None, responses=s.TrainingJobSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk=None) -> Response:
        job = self._job(request, pk)
        selectors.require_trainer(user=request.user, team=job.team)
        return Response(s.TrainingJobSerializer(lifecycle.job_cancel(job=job)).data)

    @extend_schema(request=None, responses={201: s.TrainingJobSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk=None) -> Response:
        job = self._job(request, pk)
        selectors.require_trainer(user=request.user, team=job.team)
        new = lifecycle.job_retry(job=job, created_by=request.user)
        new.refresh_from_db()
        return _created(new)


class CampaignAcquisitionView(APIView):
    """``POST /api/campaigns/{id}/acquisition/``: admins queue a job in which a reward model
    scores the campaign's open tasks and the most uncertain are served first (campaigns with
    ``task_order`` uncertainty). Members who are not admins get 403, others 404."""

    permission_classes = [IsAuthenticated]
    parser_classes = [LimitedJSONParser]

    @extend_schema(
        request=s.AcquisitionInputSerializer,
        responses={202: OpenApiResponse(description="the job: id, kind and status")},
    )
    def post(self, request: Request, campaign_id: int) -> Response:
        campaign = annotation_selectors.campaign_get_for(
            user=request.user, campaign_id=_int(campaign_id, "id")
        )
        selectors.require_trainer(user=request.user, team=campaign.team)
        data = _valid(s.AcquisitionInputSerializer, request)
        reward_model = None
        if "reward_model_version" in data:
            reward_model = (
                selectors.model_version_list(user=request.user)
                .filter(pk=data["reward_model_version"])
                .first()
            )
            if reward_model is None:
                raise InvalidInput("no such model version", field="reward_model_version")
        job = lifecycle.job_create(
            TrainingJob.Kind.ACQUISITION,
            acquisition.Request(
                created_by=request.user, campaign=campaign, reward_model_version=reward_model
            ),
        )
        return Response(
            {"job": job.pk, "kind": job.kind, "status": job.status},
            status=status.HTTP_202_ACCEPTED,
        )


class ModelVersionViewSet(viewsets.ViewSet):
    lookup_value_regex = "[0-9]+"
    permission_classes = [SeesTraining]
    pagination_class = PageNumberPagination

    @extend_schema(
        parameters=[s.ModelVersionQuerySerializer], responses=s.ModelVersionSerializer(many=True)
    )
    def list(self, request: Request) -> Response:
        kind = _query(s.ModelVersionQuerySerializer, request).get("kind")
        versions = selectors.model_version_list(user=request.user, kind=kind)
        return _paginated(request, self, versions, s.ModelVersionSerializer)

    @extend_schema(responses=s.ModelVersionSerializer)
    def retrieve(self, request: Request, pk=None) -> Response:
        version = selectors.model_version_list(user=request.user).filter(pk=_int(pk, "id")).first()
        if version is None:
            raise NotFound("model version not found")
        return Response(s.ModelVersionSerializer(version).data)

    @extend_schema(
        request=s.ModelVersionRegisterSerializer,
        responses={201: s.ModelVersionSerializer, 400: OpenApiResponse()},
    )
    def create(self, request: Request) -> Response:
        """Register an existing model (directory or hub id) as a base or policy version."""
        data = _valid(s.ModelVersionRegisterSerializer, request)
        if data["kind"] == "reward":
            raise InvalidInput("reward models are registered by their training job", field="kind")
        data["team"] = selectors.team_for_model(user=request.user, team_id=data.get("team"))
        version = services.model_version_register(**data)
        return Response(s.ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)


class RoundViewSet(viewsets.ViewSet):
    """RLHF rounds: a campaign's labels → reward model → policy update → the next campaign."""

    lookup_value_regex = "[0-9]+"
    permission_classes = [SeesTraining]
    pagination_class = PageNumberPagination

    def _round(self, request: Request, pk) -> Round:
        return selectors.round_get(user=request.user, round_id=_int(pk, "id"))

    @extend_schema(parameters=[CampaignFilterSerializer], responses=s.RoundSerializer(many=True))
    def list(self, request: Request) -> Response:
        rounds = selectors.round_list(user=request.user)
        campaign = _query(CampaignFilterSerializer, request).get("campaign")
        if campaign is not None:
            rounds = rounds.filter(campaign_id=campaign)
        return _paginated(request, self, rounds, s.RoundSerializer)

    @extend_schema(responses=s.RoundSerializer)
    def retrieve(self, request: Request, pk=None) -> Response:
        rnd = self._round(request, pk)
        return Response(s.RoundSerializer(rnd).data)

    @extend_schema(request=s.RoundCreateSerializer, responses={201: s.RoundSerializer})
    def create(self, request: Request) -> Response:
        """Start the loop on a campaign: round = its round number, from ``policy``."""
        data = _valid(s.RoundCreateSerializer, request)
        campaign = data["campaign"]
        if not permissions.can(request.user, permissions.VIEW, campaign):
            raise InvalidInput("no such campaign", field="campaign")
        selectors.require_trainer(user=request.user, team=campaign.team)
        for name in ("policy", "reference"):
            version = data.get(name)
            if version is not None and version.team_id not in (None, campaign.team_id):
                raise InvalidInput("no such model version", field=name)
        rnd = rounds.round_start(created_by=request.user, **data)
        return Response(s.RoundSerializer(rnd).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=s.ROUND_NEXT_SERIALIZER,
        responses={201: s.TrainingJobSerializer, 503: s.TrainingJobSerializer},
    )
    @action(detail=True, methods=["post"])
    def next(self, request: Request, pk=None) -> Response:
        """Start the next round: queue a generate job that samples K completions per prompt from
        the round's updated policy (optionally mixed with the previous one and the reference)
        and opens the next campaign with them, as a draft the admin activates."""
        rnd = self._round(request, pk)
        data = _valid(s.ROUND_NEXT_SERIALIZER, request)
        return _create(request, TrainingJob.Kind.GENERATE, data, round=rnd)

    @extend_schema(
        request=s.ROUND_RUN_SERIALIZER,
        responses={201: s.TrainingJobSerializer, 503: s.TrainingJobSerializer},
    )
    @action(detail=True, methods=["post"])
    def run(self, request: Request, pk=None) -> Response:
        """Run the whole round as one chained job: reward model → PPO/DPO → generate."""
        rnd = self._round(request, pk)
        data = _valid(s.ROUND_RUN_SERIALIZER, request)
        return _create(request, TrainingJob.Kind.ROUND, data, round=rnd)
