"""Thin API views: check the input's shape, call one selector or service, shape the output."""

from __future__ import annotations

import itertools

from django.db.models import OuterRef, Subquery
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import (
    agreement_figures,
    exports,
    pair_formats,
    permissions,
    review,
    selectors,
    services,
)
from annotation.agreement import Bootstrap, FlagRule
from annotation.api import serializers as s
from annotation.api.parsers import LimitedJSONParser
from annotation.errors import InvalidInput, NotFound, PermissionDenied, ServiceError
from annotation.models import Guideline, ImportJob
from annotation.services import webhooks


def _campaign_body(request: Request, campaign) -> dict:
    """Those who run or review a campaign see its gold, onboarding, overlap and task-order
    settings; labellers do not."""
    if permissions.can(request.user, permissions.VIEW, campaign):
        return s.CampaignAdminSerializer(campaign).data
    return s.CampaignSerializer(campaign).data


def _with_guideline_version(campaigns):
    latest = Guideline.objects.filter(campaign=OuterRef("pk")).order_by("-version")
    return campaigns.annotate(guideline_version=Subquery(latest.values("version")[:1]))


class _ExportNegotiation(DefaultContentNegotiation):
    """For the file exports ``?format=`` names the file format, not a DRF renderer (DRF would
    answer 404 to ``?format=csv``); their errors always answer JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _streamed(chunks, *, content_type: str, filename: str) -> StreamingHttpResponse:
    """A download streamed from ``chunks`` (str or bytes, each a few whole lines)."""
    response = StreamingHttpResponse(chunks, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class CampaignViewSet(viewsets.ViewSet):
    """Campaigns: admins manage them; labellers see those they are members of."""

    lookup_value_regex = "[0-9]+"

    def _campaign(self, request: Request, pk, perm: str | None = None) -> object:
        """The campaign (404 if unseen); with ``perm``, 403 unless the user's roles give it."""
        return selectors.campaign_get_for(user=request.user, campaign_id=_int(pk, "id"), perm=perm)

    def _annotated(self, request: Request, pk):
        campaign = (
            _with_guideline_version(selectors.campaign_list_for(user=request.user))
            .filter(pk=_int(pk, "id"))
            .first()
        )
        if campaign is None:
            raise NotFound("campaign not found")
        return campaign

    @extend_schema(responses=s.CampaignSerializer(many=True))
    def list(self, request: Request) -> Response:
        campaigns = _with_guideline_version(selectors.campaign_list_for(user=request.user))
        return Response([_campaign_body(request, campaign) for campaign in campaigns])

    @extend_schema(responses=s.CampaignSerializer)
    def retrieve(self, request: Request, pk=None) -> Response:
        return Response(_campaign_body(request, self._annotated(request, pk)))

    @extend_schema(request=s.CampaignCreateSerializer, responses={201: s.CampaignAdminSerializer})
    def create(self, request: Request) -> Response:
        if not permissions.creates_campaigns(request.user):
            raise PermissionDenied("only team managers create campaigns")
        data = _valid(s.CampaignCreateSerializer, request)
        data["team"] = services.campaign_team_choose(user=request.user, team_id=data.get("team"))
        campaign = services.campaign_create(created_by=request.user, **data)
        return Response(
            s.CampaignAdminSerializer(self._annotated(request, campaign.pk)).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=s.CampaignUpdateSerializer, responses=s.CampaignAdminSerializer)
    def partial_update(self, request: Request, pk=None) -> Response:
        campaign = self._campaign(request, pk, permissions.CHANGE)
        data = _valid(s.CampaignUpdateSerializer, request)
        services.campaign_update(campaign=campaign, **data)
        return Response(s.CampaignAdminSerializer(self._annotated(request, pk)).data)

    @extend_schema(request=s.CampaignStatusSerializer, responses=s.CampaignAdminSerializer)
    @action(detail=True, methods=["post"], url_path="status")
    def set_status(self, request: Request, pk=None) -> Response:
        campaign = self._campaign(request, pk, permissions.CHANGE)
        data = _valid(s.CampaignStatusSerializer, request)
        services.campaign_set_status(campaign=campaign, status=data["status"])
        return Response(s.CampaignAdminSerializer(self._annotated(request, pk)).data)

    @extend_schema(
        methods=["POST"], request=s.MembersSerializer, responses={200: OpenApiResponse()}
    )
    @extend_schema(
        methods=["DELETE"], request=s.MembersSerializer, responses={204: OpenApiResponse()}
    )
    @action(detail=True, methods=["post", "delete"])
    def members(self, request: Request, pk=None) -> Response:
        campaign = self._campaign(request, pk, permissions.CHANGE)
        data = _valid(s.MembersSerializer, request)
        users = data["usernames"]
        if request.method == "DELETE":
            for user in users:
                services.campaign_remove_member(campaign=campaign, user=user)
            return Response(status=status.HTTP_204_NO_CONTENT)
        added = services.campaign_add_members(campaign=campaign, users=users, role=data.get("role"))
        return Response({"added": added})

    @extend_schema(methods=["GET"], responses=s.GuidelineSerializer(many=True), request=None)
    @extend_schema(
        methods=["POST"],
        request=s.GuidelinePublishSerializer,
        responses={201: s.GuidelineSerializer},
    )
    @action(detail=True, methods=["get", "post"])
    def guidelines(self, request: Request, pk=None) -> Response:
        """All guideline versions, newest first; admins publish a new one with POST."""
        campaign = self._campaign(request, pk)
        if request.method == "POST":
            selectors.require(user=request.user, perm=permissions.CHANGE, campaign=campaign)
            data = _valid(s.GuidelinePublishSerializer, request)
            guideline = services.guideline_publish(
                campaign=campaign, text=data["text"], created_by=request.user
            )
            return Response(s.GuidelineSerializer(guideline).data, status=status.HTTP_201_CREATED)
        versions = campaign.guidelines.order_by("-version")
        return Response(s.GuidelineSerializer(versions, many=True).data)

    @extend_schema(request=s.AcknowledgeSerializer, responses={200: OpenApiResponse()})
    @action(detail=True, methods=["post"], url_path="guidelines/acknowledge")
    def acknowledge(self, request: Request, pk=None) -> Response:
        """Acknowledge a guideline version (it must be the current one)."""
        campaign = self._campaign(request, pk)
        version = _valid(s.AcknowledgeSerializer, request)["version"]
        current = selectors.current_guideline(campaign=campaign)
        if current is None or current.version != version:
            raise InvalidInput(
                f"version {version} is not the current guidelines"
                + (f" (version {current.version} is)" if current else " (there are none)"),
                field="version",
            )
        services.guideline_acknowledge(user=request.user, guideline=current)
        return Response({"acknowledged": current.version})

    @extend_schema(
        request={"multipart/form-data": s.ImportSerializer},
        responses={201: s.ImportResultSerializer, 202: s.ImportJobSerializer},
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="import",
        parser_classes=[MultiPartParser, FormParser],
    )
    def import_file(self, request: Request, pk=None) -> Response:
        """Import prompts and completions from a JSONL or CSV file; all or nothing. A file
        larger than ``IMPORT_BACKGROUND_BYTES`` is imported by a worker: 202 with the job, whose
        stage and outcome ``GET .../imports/{job}/`` reports (``Location``)."""
        campaign = self._campaign(request, pk, permissions.CHANGE)
        data = _valid(s.ImportSerializer, request)
        upload = data["file"]
        outcome = services.campaign_import_upload(
            campaign=campaign,
            file=upload,
            filename=upload.name or "upload",
            fmt=data.get("format"),
            created_by=request.user,
        )
        if isinstance(outcome, ImportJob):
            location = f"/api/campaigns/{campaign.pk}/imports/{outcome.pk}/"
            return Response(
                s.ImportJobSerializer(outcome).data,
                status=status.HTTP_202_ACCEPTED,
                headers={"Location": location},
            )
        return Response(s.ImportResultSerializer(outcome).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request={"multipart/form-data": s.RankingImportSerializer},
        responses={201: s.RankingImportResultSerializer, 202: s.ImportJobSerializer},
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="rankings/import",
        url_name="rankings-import",
        parser_classes=[MultiPartParser, FormParser],
    )
    def rankings_import(self, request: Request, pk=None) -> Response:
        """Import existing rankings (JSONL or CSV; README "Rankings in"), all or nothing: tasks
        created or matched by prompt and completions, unknown labellers created inactive (or
        the file refused). A large file goes to a worker: 202 with the job."""
        campaign = self._campaign(request, pk, permissions.CHANGE)
        data = _valid(s.RankingImportSerializer, request)
        upload = data["file"]
        outcome = services.campaign_import_upload(
            campaign=campaign,
            file=upload,
            filename=upload.name or "upload",
            fmt=data.get("format"),
            created_by=request.user,
            kind=ImportJob.Kind.RANKINGS,
            options={"new_labellers": data["new_labellers"], "task_overlap": data["task_overlap"]},
        )
        if isinstance(outcome, ImportJob):
            location = f"/api/campaigns/{campaign.pk}/imports/{outcome.pk}/"
            return Response(
                s.ImportJobSerializer(outcome).data,
                status=status.HTTP_202_ACCEPTED,
                headers={"Location": location},
            )
        return Response(
            s.RankingImportResultSerializer(outcome).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(methods=["GET"], request=None, responses=s.WebhookSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=s.WebhookInputSerializer,
        responses={201: s.WebhookCreatedSerializer},
    )
    @action(detail=True, methods=["get", "post"], parser_classes=[LimitedJSONParser])
    def webhooks(self, request: Request, pk=None) -> Response:
        """The campaign's webhooks; POST registers a URL for events and answers its signing
        secret, once (``Cache-Control: no-store``)."""
        campaign = self._campaign(request, pk, permissions.CHANGE)
        if request.method == "GET":
            return Response(s.WebhookSerializer(campaign.webhooks.all(), many=True).data)
        data = _valid(s.WebhookInputSerializer, request)
        hook = webhooks.webhook_create(
            campaign=campaign, url=data["url"], events=data["events"], created_by=request.user
        )
        return Response(
            s.WebhookCreatedSerializer(hook).data,
            status=status.HTTP_201_CREATED,
            headers={"Cache-Control": "no-store"},
        )

    @extend_schema(request=None, responses={204: OpenApiResponse()})
    @action(
        detail=True,
        methods=["delete"],
        url_path=r"webhooks/(?P<hook_id>[0-9]+)",
        url_name="webhook",
    )
    def webhook(self, request: Request, pk=None, hook_id=None) -> Response:
        campaign = self._campaign(request, pk, permissions.CHANGE)
        hook = campaign.webhooks.filter(pk=_int(hook_id, "webhook")).first()
        if hook is None:
            raise NotFound("webhook not found")
        webhooks.webhook_delete(webhook=hook)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses=s.ImportJobSerializer)
    @action(
        detail=True,
        methods=["get"],
        url_path=r"imports/(?P<job_id>[0-9]+)",
        url_name="import-job",
    )
    def import_job(self, request: Request, pk=None, job_id=None) -> Response:
        """A large import's stage, then what it stored or its line-numbered errors."""
        campaign = self._campaign(request, pk, permissions.CHANGE)
        job = campaign.import_jobs.filter(pk=_int(job_id, "job")).first()
        if job is None:
            raise NotFound("import not found")
        return Response(s.ImportJobSerializer(job).data)

    @extend_schema(
        request=None,
        responses={
            200: s.AssignmentSerializer,
            204: OpenApiResponse(description="No task left for you in this campaign."),
        },
    )
    @action(detail=True, methods=["post"], url_path="next-task", parser_classes=[LimitedJSONParser])
    def next_task(self, request: Request, pk=None) -> Response:
        """Your open task, or a new one; 204 when nothing is left for you."""
        # The hot path: the service checks access itself (404 for a campaign you may not
        # see) while it locks your membership, so there is no separate read first.
        assignment = services.task_assign_next(labeller=request.user, campaign=_int(pk, "id"))
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(s.assignment_body(assignment))

    @extend_schema(responses={200: OpenApiResponse(description="Campaign and labeller progress")})
    @action(detail=True, methods=["get"])
    def progress(self, request: Request, pk=None) -> Response:
        """Those who run or review the campaign: it and every labeller. Labellers: their own
        line only."""
        campaign = self._campaign(request, pk)
        if permissions.can(request.user, permissions.VIEW, campaign):
            return Response(
                {
                    "campaign": s.CampaignProgressSerializer(
                        selectors.campaign_progress(campaign=campaign)
                    ).data,
                    "labellers": s.LabellerProgressSerializer(
                        selectors.labeller_progress(campaign=campaign), many=True
                    ).data,
                }
            )
        mine = selectors.labeller_progress(
            campaign=campaign, users=[request.user], as_labeller=True
        )
        return Response({"labellers": s.LabellerProgressSerializer(mine, many=True).data})

    @extend_schema(parameters=[s.AgreementQuerySerializer], responses=s.AgreementResponseSerializer)
    @action(detail=True, methods=["get"])
    def agreement(self, request: Request, pk=None) -> Response:
        """Admins: the campaign's agreement figures, each with n and a 95% bootstrap interval
        over tasks; pairwise agreement says its form and chance level. ``?tasks=1`` adds the
        per-task figures (pairwise agreement, Kendall's W), one page at a time."""
        campaign = self._campaign(request, pk, permissions.VIEW)
        query = _query(s.AgreementQuerySerializer, request)
        figures = agreement_figures.campaign_agreement(
            campaign=campaign,
            fail_policy=query["fail_policy"],
            bootstrap=Bootstrap(resamples=query["resamples"], seed=query["seed"]),
        )
        body = s.CampaignAgreementSerializer(figures).data
        if query["tasks"]:
            inputs = agreement_figures.agreement_inputs(
                campaign=campaign, fail_policy=query["fail_policy"]
            )
            size = query["page_size"]
            count, tasks = agreement_figures.task_figures(
                inputs, offset=(query["page"] - 1) * size, limit=size
            )
            body["per_task"] = {
                "count": count,
                "page": query["page"],
                "page_size": size,
                "results": s.TaskAgreementSerializer(tasks, many=True).data,
            }
        return Response(body)

    @extend_schema(parameters=[s.LabellerQuerySerializer], responses=s.LabellerTableSerializer)
    @action(detail=True, methods=["get"])
    def labellers(self, request: Request, pk=None) -> Response:
        """Admins: per labeller, agreement with the others' leave-one-out consensus (n, 95% CI),
        tasks, F rate, tie rate, median time per task, and a flag with its reason; flagged
        labellers first, then the lowest agreement first."""
        campaign = self._campaign(request, pk, permissions.VIEW)
        query = _query(s.LabellerQuerySerializer, request)
        bootstrap = Bootstrap(resamples=query["resamples"], seed=query["seed"])
        rule = FlagRule()
        rows = agreement_figures.labeller_quality_table(
            campaign=campaign, fail_policy=query["fail_policy"], bootstrap=bootstrap, rule=rule
        )
        table = {
            "campaign": campaign.pk,
            "fail_policy": query["fail_policy"],
            "bootstrap": bootstrap,
            "flag_rule": rule,
            "labellers": rows,
        }
        return Response(s.LabellerTableSerializer(table).data)

    @extend_schema(parameters=[s.KappaQuerySerializer], responses=s.KappaMatrixSerializer)
    @action(detail=True, methods=["get"])
    def kappa(self, request: Request, pk=None) -> Response:
        """Admins: Cohen's kappa on pair preferences for every two labellers who ranked a task
        in common, each with n and a 95% bootstrap interval over tasks, and as a matrix."""
        campaign = self._campaign(request, pk, permissions.VIEW)
        query = _query(s.KappaQuerySerializer, request)
        table = agreement_figures.kappa_matrix(
            campaign=campaign,
            fail_policy=query["fail_policy"],
            bootstrap=Bootstrap(resamples=query["resamples"], seed=query["seed"]),
        )
        return Response(s.KappaMatrixSerializer(table).data)

    @extend_schema(parameters=[s.GoldQuerySerializer], responses=s.GoldTableSerializer)
    @action(detail=True, methods=["get"])
    def gold(self, request: Request, pk=None) -> Response:
        """Admins: every labeller's agreement with the gold reference rankings (strict pairs,
        n, 95% interval over gold tasks), its drift per block of gold tasks or per week, the
        latest block (flagged below the campaign's onboarding threshold) and the onboarding
        outcome."""
        campaign = self._campaign(request, pk, permissions.VIEW)
        query = _query(s.GoldQuerySerializer, request)
        table = agreement_figures.gold_table(
            campaign=campaign,
            fail_policy=query["fail_policy"],
            bootstrap=Bootstrap(resamples=query["resamples"], seed=query["seed"]),
            rule=agreement_figures.GoldRule(
                threshold=campaign.onboarding_threshold, block=query["block"]
            ),
            drift_by=query["drift"],
        )
        return Response(s.GoldTableSerializer(table).data)

    @extend_schema(
        methods=["POST"],
        request=s.GoldReferenceInputSerializer,
        responses=s.GoldTaskSerializer,
    )
    @extend_schema(methods=["DELETE"], request=None, responses={200: s.GoldTaskSerializer})
    @action(
        detail=True,
        methods=["post", "delete"],
        url_path=r"tasks/(?P<task_id>[0-9]+)/gold",
        url_name="task-gold",
        parser_classes=[LimitedJSONParser],
    )
    def task_gold(self, request: Request, pk=None, task_id=None) -> Response:
        """Admins: make a task gold with its reference ranking (POST, shaped like a ranking
        submit; again to replace the reference) or an ordinary task again (DELETE)."""
        campaign = self._campaign(request, pk, permissions.CHANGE)
        tasks = selectors.task_list_for_admin(campaign=campaign)
        task = tasks.filter(pk=_int(task_id, "task")).first()
        if task is None:
            raise NotFound("task not found")
        if request.method == "DELETE":
            task = services.task_unmark_gold(task=task)
        else:
            data = _valid(s.GoldReferenceInputSerializer, request)
            task = services.task_mark_gold(task=task, items=[dict(i) for i in data["items"]])
        return Response(s.GoldTaskSerializer(task).data)

    @extend_schema(
        parameters=[s.ReviewQuerySerializer],
        responses=s.ReviewQueueSerializer,
        operation_id="campaigns_review_queue",
    )
    @action(detail=True, methods=["get"], url_path="review", url_name="review")
    def review_queue(self, request: Request, pk=None) -> Response:
        """The tasks that reached their overlap, lowest agreement first, one page at a time
        (filters: ``below``, ``labeller``, ``flagged``, ``gold_failures``, ``status``). Tasks
        you ranked are left out (``own`` counts them)."""
        campaign = selectors.campaign_get_for(
            user=request.user, campaign_id=_int(pk, "id"), perm=permissions.REVIEW
        )
        query = _query(s.ReviewQuerySerializer, request)
        filters = review.QueueFilter(
            status=query["status"],
            below=query.get("below"),
            labeller=query.get("labeller"),
            flagged=query["flagged"],
            gold_failures=query["gold_failures"],
        )
        queue = review.review_queue(campaign=campaign, reviewer_id=request.user.pk, filters=filters)
        size, page = query["page_size"], query["page"]
        body = {
            "count": len(queue.entries),
            "page": page,
            "page_size": size,
            "complete": queue.complete,
            "reviewed": queue.reviewed,
            "own": queue.own,
            "results": queue.entries[(page - 1) * size : page * size],
        }
        return Response(s.ReviewQueueSerializer(body).data)

    @extend_schema(
        methods=["GET"],
        request=None,
        responses=s.TaskReviewSerializer,
        operation_id="campaigns_review_task",
    )
    @extend_schema(
        methods=["POST"],
        request=s.AdjudicateSerializer,
        responses=s.TaskReviewSerializer,
        operation_id="campaigns_review_task_adjudicate",
    )
    @action(
        detail=True,
        methods=["get", "post"],
        url_path=r"review/(?P<task_id>[0-9]+)",
        url_name="review-task",
        parser_classes=[LimitedJSONParser],
    )
    def review_task(self, request: Request, pk=None, task_id=None) -> Response:
        """A task's rankings side by side (time, comment), the consensus, the agreement, the
        provenance and the decision; POST adjudicates it (``decision``: consensus, labeller
        with ``ranking``, or written with ``items`` and a ``note``). 403 ``own_task`` for a
        task you ranked."""
        campaign = selectors.campaign_get_for(
            user=request.user, campaign_id=_int(pk, "id"), perm=permissions.REVIEW
        )
        task = selectors.review_task_get(campaign=campaign, task_id=_int(task_id, "task"))
        if request.method == "POST":
            data = _valid(s.AdjudicateSerializer, request)
            items = data.get("items")
            services.task_adjudicate(
                reviewer=request.user,
                task=task,
                decision=data["decision"],
                ranking=data.get("ranking"),
                items=[dict(i) for i in items] if items is not None else None,
                note=data["note"],
            )
        return Response(
            s.TaskReviewSerializer(review.task_review(task=task, reviewer_id=request.user.pk)).data
        )

    @extend_schema(responses=s.FeedbackSerializer(many=True))
    @action(detail=True, methods=["get"])
    def feedback(self, request: Request, pk=None) -> Response:
        """Your reviewed tasks of this campaign: your ranking beside the adjudicated one and
        the completion pairs where they differ (never another labeller's ranking)."""
        campaign = selectors.campaign_get_for(user=request.user, campaign_id=_int(pk, "id"))
        items = review.labeller_feedback(labeller_id=request.user.pk, campaign_id=campaign.pk)
        return Response(s.FeedbackSerializer(items, many=True).data)

    @extend_schema(
        parameters=[s.PairsQuerySerializer],
        responses={
            (200, "application/jsonl"): OpenApiTypes.STR,
            (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY,
        },
    )
    @action(detail=True, methods=["get"], content_negotiation_class=_ExportNegotiation)
    def pairs(self, request: Request, pk=None) -> StreamingHttpResponse:
        """Admins: preference pairs as streamed JSONL (prompt, chosen, rejected, margin and
        provenance; the same keys on every line), every labeller's as they are or aggregated
        per task."""
        campaign = self._campaign(request, pk, permissions.EXPORT)
        query = _query(s.PairsQuerySerializer, request)
        wanted = query.pop("provenance")
        rows = exports.ranking_rows(campaign_ids=[campaign.pk])
        adjudicated = exports.adjudicated_rankings(campaign_ids=[campaign.pk])
        provenance = exports.task_provenance(rows, adjudicated)
        rows = exports.with_provenance(rows, provenance, wanted)
        fmt = query.pop("format")
        options = _trl_options(fmt, query)
        if campaign.strength_scale != "none" and query["aggregate"] == "none":
            # each labeller's preference strength: a `strength` and a margin per pair
            options["strength"] = exports.ranking_strengths(campaign_ids=[campaign.pk])
        try:  # the first chunk is built here, so a refusal answers 400, not a broken stream
            chunks = pair_formats.pair_export(
                rows,
                exports.texts_for(rows),
                fmt=fmt,
                provenance=provenance,
                adjudicated=adjudicated,
                **query,
                **options,
            )
            chunks = itertools.chain([next(chunks, b"")], chunks)
        except pair_formats.ChatPromptsNeedConversational as exc:
            raise InvalidInput(str(exc), field="style") from None
        suffix = "" if query["aggregate"] == "none" else f"-{query['aggregate']}"
        if fmt != "jsonl":
            suffix += "-trl" + ("-ties" if options["part"] == "ties" else "")
        parquet = fmt == "parquet"
        return _streamed(
            chunks,
            content_type="application/vnd.apache.parquet"
            if parquet
            else "application/jsonl; charset=utf-8",
            filename=f"campaign-{campaign.pk}-pairs{suffix}.{'parquet' if parquet else 'jsonl'}",
        )

    @extend_schema(
        parameters=[s.RankingsExportQuerySerializer],
        responses={
            (200, "application/jsonl"): OpenApiTypes.STR,
            (200, "text/csv"): OpenApiTypes.STR,
        },
    )
    @action(
        detail=True,
        methods=["get"],
        url_path="rankings/export",
        url_name="rankings-export",
        renderer_classes=[JSONRenderer],
        content_negotiation_class=_ExportNegotiation,
    )
    def rankings_export(self, request: Request, pk=None) -> StreamingHttpResponse:
        """Admins: every ranking, one row each, with its provenance and the label of each
        completion; JSONL or CSV (cells that a spreadsheet would run as formulas are quoted).
        Each row also has its version, its task's provenance and the reviewer's decision;
        ``?versions=all`` adds the earlier versions of edited rankings, ``?provenance=`` keeps
        the tasks settled so."""
        campaign = self._campaign(request, pk, permissions.EXPORT)
        query = _query(s.RankingsExportQuerySerializer, request)
        fmt = query["format"]
        export = exports.with_review(
            exports.ranking_export(campaign_ids=[campaign.pk]),
            campaign_ids=[campaign.pk],
            versions=query["versions"],
            provenance=query["provenance"],
        )
        if fmt == "csv":
            return _streamed(
                exports.chunked(exports.rankings_csv(export)),
                content_type="text/csv; charset=utf-8",
                filename=f"campaign-{campaign.pk}-rankings.csv",
            )
        return _streamed(
            exports.chunked(exports.rankings_jsonl(export)),
            content_type="application/jsonl; charset=utf-8",
            filename=f"campaign-{campaign.pk}-rankings.jsonl",
        )


class LabellersInviteView(APIView):
    """Create and invite labeller accounts in bulk, answering with one-time credentials once."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(
        request=s.LabellersInviteSerializer, responses={201: s.LabellersInvitedSerializer}
    )
    def post(self, request: Request) -> Response:
        """Accounts (username, optional email) with a one-time password each, members of every
        campaign named with ``role``; all or nothing. The passwords are in this answer only
        (``Cache-Control: no-store``) and must be changed at the first login."""
        if not permissions.campaigns_where(request.user, permissions.CHANGE).exists():
            raise PermissionDenied("only those who run a campaign invite labellers")
        data = _valid(s.LabellersInviteSerializer, request)
        campaigns = []
        for pk in dict.fromkeys(data["campaigns"]):
            try:
                campaigns.append(
                    selectors.campaign_get_for(
                        user=request.user, campaign_id=pk, perm=permissions.CHANGE
                    )
                )
            except NotFound:  # an id in the body, not the path: the body is wrong (400)
                raise InvalidInput(f"no campaign {pk} (or not yours)", field="campaigns") from None
        invited = services.labellers_invite(
            campaigns=campaigns, accounts=[dict(a) for a in data["accounts"]], role=data["role"]
        )
        body = {
            "campaigns": [c.pk for c in campaigns],
            "role": data["role"],
            "accounts": [
                {"user": u.pk, "username": u.username, "email": u.email, "password": password}
                for u, password in invited
            ],
        }
        return Response(
            s.LabellersInvitedSerializer(body).data,
            status=status.HTTP_201_CREATED,
            headers={"Cache-Control": "no-store"},
        )


class AssignmentViewSet(viewsets.ViewSet):
    """Your own assignments. Anyone else's id answers 404."""

    lookup_value_regex = "[0-9]+"
    pagination_class = PageNumberPagination

    @extend_schema(
        parameters=[s.CampaignFilterSerializer],
        responses=s.AssignmentSummarySerializer(many=True),
    )
    def list(self, request: Request) -> Response:
        assignments = selectors.assignment_list_for(labeller=request.user)
        campaign = _query(s.CampaignFilterSerializer, request).get("campaign")
        if campaign is not None:
            assignments = assignments.filter(campaign_id=campaign)
        return _paginated(
            request,
            self,
            assignments.order_by("-assigned_at", "-id"),
            s.AssignmentSummarySerializer,
        )

    @extend_schema(responses=s.AssignmentSerializer)
    def retrieve(self, request: Request, pk=None) -> Response:
        assignment = selectors.assignment_get_for_labeller(
            labeller=request.user, assignment_id=_int(pk, "id")
        )
        return Response(s.AssignmentSerializer(assignment).data)

    @extend_schema(
        methods=["POST"],
        parameters=[
            OpenApiParameter(
                "next",
                bool,
                description="Also hand out the next task: the response gains a `next` object "
                "{assignment, reason} so the page shows it without another request.",
            )
        ],
        request=s.RankingInputSerializer,
        responses={201: s.RankingSerializer, 200: s.RankingSerializer},
    )
    @extend_schema(methods=["GET"], responses=s.RankingSerializer, request=None)
    @extend_schema(
        methods=["PUT"], request=s.RankingEditSerializer, responses={200: s.RankingSerializer}
    )
    @action(detail=True, methods=["get", "post", "put"], parser_classes=[LimitedJSONParser])
    def ranking(self, request: Request, pk=None) -> Response:
        """Submit your ranking (idempotent: the same ranking again answers 200), read it, or
        edit it (PUT with the ``version`` you edited: a new version, the old one kept; while
        the campaign is open and no reviewer has adjudicated the task)."""
        assignment_id = _int(pk, "id")
        if request.method == "PUT":
            data = _valid_for_assignment(s.RankingEditSerializer, request, assignment_id)
            edited = services.ranking_edit(
                labeller=request.user,
                assignment=assignment_id,
                items=[dict(item) for item in data["items"]],
                time_spent_ms=data["time_spent_ms"],
                version=data["version"],
                comment=data["comment"] or "",
                strength=data.get("strength"),
                justification=data.get("justification") or "",
            )
            ranking = selectors.ranking_get_for(user=request.user, ranking_id=edited.ranking.pk)
            return Response(s.RankingSerializer(ranking, context=_viewed(request)).data)
        if request.method == "GET":
            assignment = selectors.assignment_get_for_labeller(
                labeller=request.user, assignment_id=assignment_id
            )
            ranking = (
                selectors.ranking_list_for(user=request.user).filter(assignment=assignment).first()
            )
            if ranking is None:
                raise NotFound("this assignment has no ranking yet")
            return Response(s.RankingSerializer(ranking, context=_viewed(request)).data)
        data = _valid_for_assignment(s.RankingInputSerializer, request, assignment_id)
        # The hot path: the service locks and checks the assignment itself (404 for anyone
        # else's) and the response is built from what it returns, without reading it back.
        result = services.ranking_submit(
            labeller=request.user,
            assignment=assignment_id,
            items=[dict(item) for item in data["items"]],
            time_spent_ms=data["time_spent_ms"],
            comment=data["comment"] or "",
            strength=data.get("strength"),
            justification=data.get("justification") or "",
        )
        body = s.ranking_body(result)
        if request.query_params.get("next") in ("1", "true"):
            body["next"] = _next_for(request, result.ranking.campaign)
        return Response(
            body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        )

    @extend_schema(request=s.SkipSerializer, responses=s.AssignmentSummarySerializer)
    @action(detail=True, methods=["post"], parser_classes=[LimitedJSONParser])
    def skip(self, request: Request, pk=None) -> Response:
        assignment = selectors.assignment_get_for_labeller(
            labeller=request.user, assignment_id=_int(pk, "id")
        )
        reason = _valid(s.SkipSerializer, request)["reason"]
        assignment = services.assignment_skip(
            labeller=request.user, assignment=assignment, reason=reason
        )
        return Response(s.AssignmentSummarySerializer(assignment).data)


class RankingViewSet(viewsets.ViewSet):
    """Rankings: admins read all (filter with ?campaign=), labellers their own only."""

    lookup_value_regex = "[0-9]+"
    pagination_class = PageNumberPagination

    @extend_schema(
        parameters=[s.CampaignFilterSerializer], responses=s.RankingSerializer(many=True)
    )
    def list(self, request: Request) -> Response:
        campaign = _query(s.CampaignFilterSerializer, request).get("campaign")
        rankings = selectors.ranking_list_for(user=request.user, campaign_id=campaign).order_by(
            "id"
        )
        return _paginated(request, self, rankings, s.RankingSerializer, context=_viewed(request))

    @extend_schema(responses=s.RankingSerializer)
    def retrieve(self, request: Request, pk=None) -> Response:
        ranking = selectors.ranking_get_for(user=request.user, ranking_id=_int(pk, "id"))
        return Response(s.RankingSerializer(ranking, context=_viewed(request)).data)


def _trl_options(fmt: str, query: dict) -> dict:
    """Take TRL's format options out of the pairs query: nothing for the project's own JSONL
    (``style``, ``part`` and ``rlhf_columns`` mean nothing there)."""
    options = {name: query.pop(name) for name in ("style", "part", "rlhf_columns") if name in query}
    return options if fmt != "jsonl" else {}


def _next_for(request: Request, campaign) -> dict:
    """The labeller's next assignment after a submit, or why there is none."""
    try:
        nxt = services.task_assign_next(labeller=request.user, campaign=campaign)
    except ServiceError as exc:
        return {"assignment": None, "reason": exc.code, "detail": exc.message}
    if nxt is None:
        return {"assignment": None, "reason": "none_left", "detail": "no task left for you"}
    return {"assignment": s.assignment_body(nxt), "reason": None, "detail": ""}


def _paginated(request: Request, view, queryset, serializer_class, context=None) -> Response:
    """A page of ``queryset`` as ``{count, next, previous, results}`` (``?page=``): the view's
    ``pagination_class``, which is also what the schema describes."""
    paginator = view.pagination_class()
    page = paginator.paginate_queryset(queryset, request, view=view)
    data = serializer_class(page, many=True, context=context or {}).data
    return paginator.get_paginated_response(data)


def _viewed(request: Request) -> dict:
    """Serializer context: the campaigns whose task ids the user may see (those they view)."""
    campaigns = permissions.campaigns_where(request.user, permissions.VIEW)
    return {"viewed": set(campaigns.values_list("pk", flat=True))}


def _query(serializer_class, request: Request) -> dict:
    """The query parameters, checked by ``serializer_class`` (400 naming the parameter)."""
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _valid_for_assignment(serializer_class, request: Request, assignment_id: int) -> dict:
    """The body checked by ``serializer_class``; an invalid body for someone else's assignment
    answers 404 whatever it says (its errors would confirm the assignment exists)."""
    serializer = serializer_class(data=request.data)
    if not serializer.is_valid():
        selectors.assignment_get_for_labeller(labeller=request.user, assignment_id=assignment_id)
        raise ValidationError(serializer.errors)
    return serializer.validated_data


def _valid(serializer_class, request: Request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _int(value, field: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput("must be an integer", field=field) from None
    if number < 1 or number > 2**62:
        raise NotFound("not found")
    return number
