"""Dashboard pages for campaigns and their quality, for those who run or review them: each page
asks the role its action needs (``annotation.permissions``: view, change, export).

Every write goes through ``annotation.services`` (the same calls as the API), every figure
through ``annotation.agreement_figures`` / ``annotation.agreement`` / ``annotation.consensus``;
the views only read the request, call them and lay the answers out. Service errors come back
on the form next to the field they name.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import (
    agreement,
    agreement_figures,
    consensus,
    exports,
    importing,
    permissions,
    review,
    selectors,
    services,
)
from annotation.dashboard import forms
from annotation.errors import NotFound, ServiceError
from annotation.models import Campaign, ImportJob, Membership, TaskCompletion
from annotation.pairs import FAIL
from annotation.rendering import render_markdown
from config.dashboard import MAX_ID, add_service_error, dashboard_required, panels

ACTIVE_WINDOW = timedelta(hours=24)
QUALITY_FAIL_POLICY = exports.PAIRS_FAIL_POLICY
TASK_SORTS = {
    "id": "task (import order)",
    "agreement": "lowest agreement first",
    "-agreement": "highest agreement first",
    "rankings": "most rankings first",
    "status": "open, complete, reviewed",
}
PAGE_SIZE = 50


# --- Access -------------------------------------------------------------------------------------


def _campaign(request: HttpRequest, campaign_id: int, perm: str = permissions.VIEW) -> Campaign:
    """The campaign if the user's roles give ``perm`` on it; 404 when they cannot see it (or see
    it only as a labeller), 403 when they see it but their role does not reach ``perm``."""
    if campaign_id > MAX_ID:
        raise Http404("campaign not found")
    try:
        campaign = selectors.campaign_get_for(user=request.user, campaign_id=campaign_id)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    if not permissions.can(request.user, permissions.VIEW, campaign):
        raise Http404("campaign not found")
    if not permissions.can(request.user, perm, campaign):
        raise DjangoPermissionDenied("your role in this campaign does not allow this")
    campaign.allowed = allowed(request.user, campaign)  # what the templates offer
    return campaign


def allowed(user, campaign: Campaign) -> dict[str, bool]:
    """What the page may offer ``user`` on ``campaign`` (the views check again on POST)."""
    return {
        name: permissions.can(user, perm, campaign)
        for name, perm in (
            ("change", permissions.CHANGE),
            ("export", permissions.EXPORT),
            ("review", permissions.REVIEW),
            ("train", permissions.TRAIN),
        )
    }


def _posted(request: HttpRequest):
    """The POST data to bind a form to (even when empty: an empty POST shows "required")."""
    return request.POST if request.method == "POST" else None


def _percent(part: int, whole: int) -> int:
    return round(100 * part / whole) if whole else 0


# --- Campaign list ------------------------------------------------------------------------------


@dashboard_required
@require_GET
def campaign_list(request: HttpRequest) -> HttpResponse:
    """Every campaign: status, round, progress, today's rankings, active labellers, agreement."""
    now = timezone.now()
    start_of_day = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = []
    for campaign in permissions.campaigns_where(request.user, permissions.VIEW).order_by(
        "-created_at", "-id"
    ):
        progress = selectors.campaign_progress(campaign=campaign)
        rankings = selectors.ranking_list_for(user=request.user, campaign_id=campaign.pk)
        rows.append(
            {
                "campaign": campaign,
                "progress": progress,
                "complete_percent": _percent(progress.tasks_complete, progress.tasks),
                "rankings_today": rankings.filter(created_at__gte=start_of_day).count(),
                "active_labellers": rankings.filter(created_at__gte=now - ACTIVE_WINDOW)
                .values("labeller_id")
                .distinct()
                .count(),
                "agreement": (
                    agreement_figures.strict_agreement_at_a_glance(campaign=campaign)
                    if progress.rankings
                    else None
                ),
            }
        )
    return render(
        request,
        "dashboard/campaign_list.html",
        {"rows": rows, "creates_campaigns": permissions.creates_campaigns(request.user)},
    )


@dashboard_required
@require_http_methods(["GET", "POST"])
def campaign_create(request: HttpRequest) -> HttpResponse:
    if not permissions.creates_campaigns(request.user):
        raise DjangoPermissionDenied("only team managers create campaigns")
    teams = list(permissions.teams_where(request.user, permissions.ADD))
    form = forms.CampaignForm(_posted(request), teams=teams)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        chosen = data.pop("team", None)
        try:
            team = services.campaign_team_choose(
                user=request.user, team_id=chosen.pk if chosen else None
            )
            campaign = services.campaign_create(created_by=request.user, team=team, **data)
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Campaign “{campaign.name}” created (draft).")
            return redirect("dashboard:campaign", campaign_id=campaign.pk)
    return render(
        request,
        "dashboard/campaign_form.html",
        {"form": form, "campaign": None},
        status=400 if form.errors else 200,
    )


# --- One campaign -------------------------------------------------------------------------------


def _detail(request: HttpRequest, campaign: Campaign, *, status: int = 200, **forms_given):
    progress = selectors.campaign_progress(campaign=campaign)
    guideline = selectors.current_guideline(campaign=campaign)
    labellers = selectors.labeller_progress(campaign=campaign)
    roles = {
        user_id: Membership.Role(role).name.lower()
        for user_id, role in campaign.memberships.values_list("user_id", "role")
    }
    acknowledged = set(
        campaign.memberships.filter(acknowledged_guideline=guideline).values_list(
            "user_id", flat=True
        )
        if guideline
        else []
    )
    context = {
        "campaign": campaign,
        "progress": progress,
        "complete_percent": _percent(progress.tasks_complete, progress.tasks),
        "rankings_percent": _percent(progress.rankings, progress.target_rankings),
        "guideline": guideline,
        "labellers": [
            {
                "row": row,
                "acknowledged": row.user_id in acknowledged,
                "role": roles.get(row.user_id, ""),
            }
            for row in labellers
        ],
        "transitions": [
            (status_value, Campaign.Status(status_value).label)
            for status_value in Campaign.Status.values
            if status_value in Campaign.TRANSITIONS[campaign.status]
        ],
        "members_form": forms_given.get("members_form") or forms.MembersForm(),
        "invite_form": forms_given.get("invite_form") or forms.InviteForm(),
        "pairs_form": forms.PairsExportForm(),
        "urls": {
            "pairs": reverse("campaign-pairs", args=[campaign.pk]),
            "rankings": reverse("campaign-rankings-export", args=[campaign.pk]),
        },
        **panels("campaign", request, campaign=campaign),
    }
    return render(request, "dashboard/campaign_detail.html", context, status=status)


@dashboard_required
@require_GET
def campaign_detail(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """A campaign's overview: progress, labellers, status, members, exports, links."""
    return _detail(request, _campaign(request, campaign_id))


@dashboard_required
@require_http_methods(["GET", "POST"])
def campaign_edit(request: HttpRequest, campaign_id: int) -> HttpResponse:
    campaign = _campaign(request, campaign_id, permissions.CHANGE)
    initial = {name: getattr(campaign, name) for name in forms.CampaignForm.base_fields}
    form = forms.CampaignForm(_posted(request), initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        try:
            services.campaign_update(campaign=campaign, **form.cleaned_data)
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, "Settings saved.")
            return redirect("dashboard:campaign", campaign_id=campaign.pk)
    return render(
        request,
        "dashboard/campaign_form.html",
        {"form": form, "campaign": campaign},
        status=400 if form.errors else 200,
    )


@dashboard_required
@require_POST
def campaign_status(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """Pause, resume, activate or close (services.campaign_set_status guards the moves)."""
    campaign = _campaign(request, campaign_id, permissions.CHANGE)
    form = forms.StatusForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Unknown status.")
    else:
        try:
            campaign = services.campaign_set_status(
                campaign=campaign, status=form.cleaned_data["status"]
            )
        except ServiceError as exc:
            messages.error(request, exc.message.capitalize() + ".")
        else:
            messages.success(request, f"The campaign is now {campaign.get_status_display()}.")
    return redirect("dashboard:campaign", campaign_id=campaign.pk)


@dashboard_required
@require_POST
def members_add(request: HttpRequest, campaign_id: int) -> HttpResponse:
    campaign = _campaign(request, campaign_id, permissions.CHANGE)
    form = forms.MembersForm(request.POST)
    if not form.is_valid():
        return _detail(request, campaign, members_form=form, status=400)
    added = services.campaign_add_members(
        campaign=campaign,
        users=form.cleaned_data["usernames"],
        role=form.cleaned_data["role"] or None,
    )
    messages.success(request, f"Added {added} member{'s' if added != 1 else ''}.")
    return redirect("dashboard:campaign", campaign_id=campaign.pk)


@dashboard_required
@require_POST
def member_remove(request: HttpRequest, campaign_id: int) -> HttpResponse:
    campaign = _campaign(request, campaign_id, permissions.CHANGE)
    form = forms.RemoveMemberForm(request.POST)
    user = None
    if form.is_valid():
        user = get_user_model().objects.filter(pk=form.cleaned_data["user"]).first()
    if user is None:
        messages.error(request, "No such labeller.")
    else:
        services.campaign_remove_member(campaign=campaign, user=user)
        messages.success(request, f"Removed {user.username}; their rankings stay.")
    return redirect("dashboard:campaign", campaign_id=campaign.pk)


@dashboard_required
@require_POST
def labeller_invite(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """Create a labeller account and show its one-time password, once (never stored in clear)."""
    campaign = _campaign(request, campaign_id, permissions.CHANGE)
    form = forms.InviteForm(request.POST)
    if form.is_valid():
        try:
            user, password = services.labeller_invite(campaign=campaign, **form.cleaned_data)
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            response = render(
                request,
                "dashboard/invited.html",
                {
                    "campaign": campaign,
                    "invited": user,
                    "password": password,
                    "login_url": request.build_absolute_uri(reverse("login")),
                },
            )
            response["Cache-Control"] = "no-store"
            return response
    return _detail(request, campaign, invite_form=form, status=400)


# --- Guidelines ---------------------------------------------------------------------------------


@dashboard_required
@require_http_methods(["GET", "POST"])
def guidelines(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """The markdown editor with a live preview, and every published version."""
    campaign = _campaign(
        request, campaign_id, permissions.CHANGE if request.method == "POST" else permissions.VIEW
    )
    current = selectors.current_guideline(campaign=campaign)
    form = forms.GuidelineForm(_posted(request), initial={"text": current.text if current else ""})
    if request.method == "POST" and form.is_valid():
        try:
            guideline = services.guideline_publish(
                campaign=campaign, text=form.cleaned_data["text"], created_by=request.user
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request,
                f"Published version {guideline.version}. Labellers acknowledge it before "
                "their next task.",
            )
            return redirect("dashboard:guidelines", campaign_id=campaign.pk)
    text = form["text"].value() or ""
    versions = (
        campaign.guidelines.select_related("created_by")
        .annotate(acknowledged=Count("acknowledgements"))
        .order_by("-version")
    )
    return render(
        request,
        "dashboard/guidelines.html",
        {
            "campaign": campaign,
            "form": form,
            "current": current,
            "preview": render_markdown(text),
            "versions": [(v, render_markdown(v.text)) for v in versions],
            "members": campaign.memberships.count(),
            "preview_url": reverse("dashboard:guidelines-preview"),
        },
        status=400 if form.errors else 200,
    )


@dashboard_required
@require_POST
def guidelines_preview(request: HttpRequest) -> JsonResponse:
    """Markdown in, sanitised HTML out (annotation.rendering, as labellers will see it)."""
    form = forms.PreviewForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors}, status=400)
    return JsonResponse({"html": str(render_markdown(form.cleaned_data["text"]))})


# --- Import -------------------------------------------------------------------------------------


@dashboard_required
@require_http_methods(["GET", "POST"])
def campaign_import(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """Upload JSONL/CSV (services.campaign_import_upload: all or nothing, errors by line). A
    large file is imported by a worker: the page then follows the job (``?job=``) until done."""
    campaign = _campaign(request, campaign_id, permissions.CHANGE)
    form = forms.ImportForm(_posted(request), request.FILES or None)
    line_errors: list = []
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            outcome = services.campaign_import_upload(
                campaign=campaign,
                file=upload,
                filename=upload.name or "upload",
                fmt=form.cleaned_data["format"] or None,
                created_by=request.user,
            )
        except importing.ImportFailed as exc:
            line_errors = exc.errors
            form.add_error("file", f"{upload.name}: {exc.count} error(s); nothing stored.")
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            if isinstance(outcome, ImportJob):
                url = reverse("dashboard:import", args=[campaign.pk])
                return redirect(f"{url}?job={outcome.pk}")
            messages.success(
                request,
                f"Imported {outcome.prompts} prompts, {outcome.completions} completions and "
                f"{outcome.tasks} tasks from {upload.name}.",
            )
            return redirect("dashboard:campaign", campaign_id=campaign.pk)
    job = None
    job_id = request.GET.get("job", "")
    if job_id.isdigit() and int(job_id) <= MAX_ID:
        job = campaign.import_jobs.filter(pk=int(job_id)).first()
        if job is not None and job.status == ImportJob.Status.FAILED:
            line_errors = job.errors
    return render(
        request,
        "dashboard/import.html",
        {
            "campaign": campaign,
            "form": form,
            "job": job,
            "line_errors": line_errors[:500],
            "more_errors": max(0, len(line_errors) - 500),
            "progress": selectors.campaign_progress(campaign=campaign),
            **panels("campaign_import", request, campaign=campaign),
        },
        status=400 if form.errors else 200,
    )


# --- Quality ------------------------------------------------------------------------------------


def _trend_json(points: list[agreement_figures.TrendPoint]) -> list[dict[str, Any]]:
    return [
        {
            "date": point.date,
            "rankings": point.rankings,
            "tasks_with_overlap": point.tasks_with_overlap,
            "figures": {
                key: {"value": f.value, "n": f.n, "ci_low": f.ci_low, "ci_high": f.ci_high}
                for key, f in point.figures.items()
            },
        }
        for point in points
    ]


@dashboard_required
@require_GET
def campaign_quality(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """Agreement figures (form, chance, n, 95% CI), their trend, and the labeller table."""
    campaign = _campaign(request, campaign_id)
    # The default is the pair export's (F completions give no pairs): the figures describe the
    # pairs a reward model is trained on unless asked otherwise.
    fail_policy = request.GET.get("fail_policy", QUALITY_FAIL_POLICY)
    if fail_policy not in exports.FAIL_POLICIES:
        fail_policy = QUALITY_FAIL_POLICY
    figures = agreement_figures.campaign_agreement(campaign=campaign, fail_policy=fail_policy)
    gold = agreement_figures.gold_table(campaign=campaign, fail_policy=fail_policy)
    labellers = agreement_figures.labeller_quality_table(
        campaign=campaign, fail_policy=fail_policy, gold=gold
    )
    kappa = agreement_figures.kappa_matrix(campaign=campaign, fail_policy=fail_policy)
    cells = {(c.labeller_a, c.labeller_b): c for c in kappa.pairs}
    kappa_rows = [
        {
            "name": name,
            "self": i,
            "cells": [
                cells.get((min(pk, other), max(pk, other))) if pk != other else None
                for other, _ in kappa.labellers
            ],
        }
        for i, (pk, name) in enumerate(kappa.labellers)
    ]
    return render(
        request,
        "dashboard/quality.html",
        {
            "campaign": campaign,
            "figures": figures,
            "labellers": labellers,
            "kappa": kappa,
            "kappa_rows": kappa_rows,
            "gold": gold if gold.gold_tasks else None,
            "gold_drift": gold_drift_chart(gold) if gold.gold_tasks else None,
            "fail_policy": fail_policy,
            "fail_policies": exports.FAIL_POLICIES,
            "trend": {
                "points": _trend_json(
                    agreement_figures.agreement_trend(campaign=campaign, fail_policy=fail_policy)
                ),
                "labels": {
                    "pairwise_agreement.strict": "pairwise agreement, strict (chance 50%)",
                    "pairwise_agreement.three_way": "pairwise agreement, three-way (chance 33%)",
                    "alpha.ranks": "Krippendorff's alpha (ordinal, ranks)",
                    "kendall_w": "Kendall's W (mean over tasks)",
                },
                "chance": {
                    "pairwise_agreement.strict": agreement.CHANCE["strict"],
                    "pairwise_agreement.three_way": agreement.CHANCE["three_way"],
                },
            },
        },
    )


def gold_drift_chart(gold: agreement_figures.GoldTable) -> dict:
    """Each labeller's gold agreement per block of gold tasks, for the quality page's chart:
    x is the block (gold tasks 1-10, 11-20, ... in the order each labeller ranked them), so a
    labeller drifting away from the references shows as a falling line."""
    longest = max((row.drift for row in gold.rows), key=len, default=())
    return {
        "labels": [point.label for point in longest],
        "threshold": gold.rule.threshold,
        "series": [
            {
                "username": row.username,
                "flagged": row.flagged,
                "points": [
                    {
                        "value": point.agreement.value,
                        "ci_low": point.agreement.ci_low,
                        "ci_high": point.agreement.ci_high,
                        "tasks": point.tasks,
                        "start": point.start.date().isoformat(),
                        "end": point.end.date().isoformat(),
                    }
                    for point in row.drift
                ],
            }
            for row in gold.rows
        ],
    }


# --- Rankings side by side ----------------------------------------------------------------------


@dataclass
class CompletionRow:
    completion_id: int
    position: int
    text: str
    source: str
    labels: list[Any]
    consensus: Any
    reference: Any = ""
    """the gold reference label, on a gold task"""
    proposed: str = ""
    """what the gold form offers: the reference, else the consensus, else the position"""


def _label(value) -> str:
    if value is None:
        return "—"
    return FAIL if value == FAIL else str(value)


def _task_rows(task_ids: list[int]) -> dict[int, list[tuple[int, int, str, str]]]:
    """(completion id, position, text, source) of each task's completions, in import order."""
    slots: dict[int, list[tuple[int, int, str, str]]] = defaultdict(list)
    for task_id, completion_id, position, text, source in (
        TaskCompletion.objects.filter(task_id__in=task_ids)
        .order_by("task_id", "position")
        .values_list(
            "task_id", "completion_id", "position", "completion__text", "completion__source"
        )
    ):
        slots[task_id].append((completion_id, position, text, source))
    return slots


@dashboard_required
@require_GET
def labeller_detail(request: HttpRequest, campaign_id: int, user_id: int) -> HttpResponse:
    """One labeller's rankings next to the other labellers' consensus on the same tasks."""
    campaign = _campaign(request, campaign_id)
    labeller = get_user_model().objects.filter(pk=min(user_id, MAX_ID)).first()
    if labeller is None:
        raise Http404("labeller not found")
    inputs = agreement_figures.agreement_inputs(campaign=campaign)
    row = next(
        (r for r in agreement_figures.labeller_figures(inputs) if r.labeller_id == labeller.pk),
        None,
    )
    credit, scored = agreement.consensus_credit(inputs.table, inputs.votes)
    per_ranking = {
        int(rid): (float(c), int(s))
        for rid, c, s in zip(inputs.table.ranking_ids, credit, scored, strict=True)
    }
    rows = exports.ranking_rows(campaign_ids=[campaign.pk])
    by_task: dict[int, list] = defaultdict(list)
    for r in rows:
        by_task[r.task_id].append(r)
    mine = [r for r in rows if r.labeller_id == labeller.pk]
    paginator = Paginator(mine, PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    slots = _task_rows([r.task_id for r in page.object_list])
    tasks = []
    for ranking in page.object_list:
        others = [r.items for r in by_task[ranking.task_id] if r.labeller_id != labeller.pk]
        agreed = consensus.ranked_pairs(others) if others else {}
        got, pairs = per_ranking.get(ranking.ranking_id, (0.0, 0))
        tasks.append(
            {
                "ranking": ranking,
                "others": len(others),
                "agreement": got / pairs if pairs else None,
                "pairs": pairs,
                "completions": [
                    CompletionRow(
                        completion_id=cid,
                        position=position,
                        text=text,
                        source=source,
                        labels=[_label(ranking.items.get(cid))],
                        consensus=_label(agreed.get(cid)) if others else "—",
                    )
                    for cid, position, text, source in slots[ranking.task_id]
                ],
            }
        )
    return render(
        request,
        "dashboard/labeller.html",
        {
            "campaign": campaign,
            "labeller": labeller,
            "row": row,
            "tasks": tasks,
            "page": page,
        },
    )


@dashboard_required
@require_GET
def task_list(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """The campaign's tasks with their rankings count and per-task agreement."""
    campaign = _campaign(request, campaign_id)
    get = request.GET
    status = get.get("status", "all")
    if status not in selectors.TASK_STATUSES:
        status = "all"
    labeller = get.get("labeller", "")
    labeller_id = int(labeller) if labeller.isdigit() and int(labeller) <= MAX_ID else None
    gold = {"1": True, "0": False}.get(get.get("gold", ""))
    sort = get.get("sort", "id")
    if sort not in TASK_SORTS:
        sort = "id"
    tasks = selectors.task_list_filtered(
        campaign=campaign, status=status, labeller_id=labeller_id, gold=gold
    )
    figures = agreement_figures.task_agreement_by_id(campaign=campaign)
    if sort == "id":
        ordered = tasks.order_by("id")
    elif sort == "rankings":
        ordered = tasks.order_by("-submitted_count", "id")
    elif sort == "status":  # open first, then complete, then reviewed
        ordered = sorted(
            tasks, key=lambda t: (t.reviewed, t.submitted_count >= t.target_overlap, t.pk)
        )
    else:  # agreement, lowest first (undefined last), or highest first
        lowest = sort == "agreement"

        def key(task):
            value = figures.get(task.pk, (None, 0, None))[0]
            return (value is None, (value or 0.0) if lowest else -(value or 0.0), task.pk)

        ordered = sorted(tasks, key=key)
    page = Paginator(ordered, PAGE_SIZE).get_page(get.get("page"))
    shown = {
        "status": status,
        "labeller": str(labeller_id or ""),
        "gold": {True: "1", False: "0", None: ""}[gold],
        "sort": sort,
    }
    query = "&".join(f"{k}={v}" for k, v in shown.items() if v and v not in ("all", "id"))
    members = campaign.memberships.order_by("user__username").values_list(
        "user_id", "user__username"
    )
    return render(
        request,
        "dashboard/tasks.html",
        {
            "campaign": campaign,
            "page": page,
            "tasks": [(task, figures.get(task.pk)) for task in page.object_list],
            "shown": shown,
            "query": query,
            "members": list(members),
            "sorts": TASK_SORTS,
            "statuses": selectors.TASK_STATUSES,
        },
    )


@dashboard_required
@require_GET
def task_detail(request: HttpRequest, campaign_id: int, task_id: int) -> HttpResponse:
    """A task's completions with every labeller's ranking side by side and the consensus."""
    campaign = _campaign(request, campaign_id)
    return _task_page(request, campaign, _task(campaign, task_id))


def _task(campaign: Campaign, task_id: int):
    task = selectors.task_list_for_admin(campaign=campaign).filter(pk=min(task_id, MAX_ID)).first()
    if task is None:
        raise Http404("task not found")
    return task


@dashboard_required
@require_POST
def task_gold(request: HttpRequest, campaign_id: int, task_id: int) -> HttpResponse:
    """Make the task a gold task with the reference ranking posted (``rank-<completion id>``
    per completion: 1..N or F), or an ordinary task again (``action=unmark``)."""
    campaign = _campaign(request, campaign_id, permissions.CHANGE)
    task = _task(campaign, task_id)
    try:
        if request.POST.get("action") == "unmark":
            services.task_unmark_gold(task=task)
            messages.success(request, f"Task {task.pk} is an ordinary task again.")
        else:
            items = [
                {"completion": completion_id, "rank": _posted_rank(request, completion_id)}
                for completion_id in TaskCompletion.objects.filter(task=task)
                .order_by("position")
                .values_list("completion_id", flat=True)
            ]
            services.task_mark_gold(task=task, items=items)
            messages.success(
                request,
                f"Task {task.pk} is a gold task: its rankings are now compared with this "
                "reference and left out of exports and agreement.",
            )
    except ServiceError as exc:
        return _task_page(request, campaign, task, gold_error=exc.message, status=400)
    return redirect("dashboard:task", campaign_id=campaign.pk, task_id=task.pk)


def _posted_rank(request: HttpRequest, completion_id: int) -> Any:
    """The form's value for one completion: an int rank, "F", or the raw text (refused later,
    with the field named, by the service)."""
    value = request.POST.get(f"rank-{completion_id}", "").strip()
    if value.upper() == FAIL:
        return FAIL
    return int(value) if value.isdigit() else value


def _task_page(
    request: HttpRequest, campaign: Campaign, task, *, gold_error: str = "", status: int = 200
) -> HttpResponse:
    rankings = list(
        selectors.ranking_list_for(user=request.user, campaign_id=campaign.pk)
        .filter(task=task)
        .select_related("labeller")
        .order_by("labeller__username", "id")
    )
    labels = [{item.completion_id: item.label for item in r.items.all()} for r in rankings]
    agreed = consensus.ranked_pairs(labels) if labels else {}
    # A task's figures depend on its own rankings only: read those, not the campaign's.
    rows = exports.ranking_rows(campaign_ids=[campaign.pk], task_ids=[task.pk])
    _, figures = agreement_figures.task_figures(
        agreement_figures.inputs_from_rows(rows, campaign_id=campaign.pk)
    )
    figure = next((f for f in figures if f.task_id == task.pk), None)
    reference = task.gold_ranking if task.is_gold else {}
    completions = [
        CompletionRow(
            completion_id=cid,
            position=position,
            text=text,
            source=source,
            labels=[_label(ranking.get(cid)) for ranking in labels],
            consensus=_label(agreed.get(cid)) if labels else "—",
            reference=_label(reference.get(str(cid))) if reference else "",
            proposed=str(reference.get(str(cid)) if reference else agreed.get(cid, position + 1)),
        )
        for cid, position, text, source in _task_rows([task.pk])[task.pk]
    ]
    n = len(completions)
    return render(
        request,
        "dashboard/task.html",
        {
            "campaign": campaign,
            "task": task,
            "here": f"Task {task.pk}",
            "rankings": rankings,
            "completions": completions,
            "figure": figure,
            "rank_choices": [str(r) for r in range(1, n + 1)]
            + ([FAIL] if campaign.allow_fail else []),
            "gold_error": gold_error,
        },
        status=status,
    )


# --- Review and adjudication --------------------------------------------------------------------


def _queue_filter(request: HttpRequest) -> tuple[review.QueueFilter, dict[str, str]]:
    """The queue's filters from the query string (anything unreadable is ignored, as the
    page's own form never sends it), and their values to put back in the form."""
    get = request.GET
    status = get.get("status", "pending")
    if status not in review.STATUSES:
        status = "pending"
    below = None
    with contextlib.suppress(ValueError):
        below = float(get["below"]) if get.get("below") else None
    if below is not None and not 0 <= below <= 1:
        below = None
    labeller = get.get("labeller", "")
    filters = review.QueueFilter(
        status=status,
        below=below,
        labeller=int(labeller) if labeller.isdigit() and int(labeller) <= MAX_ID else None,
        flagged=get.get("flagged") == "1",
        gold_failures=get.get("gold_failures") == "1",
    )
    shown = {
        "status": status,
        "below": "" if below is None else str(below),
        "labeller": str(filters.labeller or ""),
        "flagged": "1" if filters.flagged else "",
        "gold_failures": "1" if filters.gold_failures else "",
    }
    return filters, shown


@dashboard_required
@require_GET
def review_queue(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """The campaign's review queue: tasks that reached their overlap, lowest agreement first."""
    campaign = _campaign(request, campaign_id, permissions.REVIEW)
    filters, shown = _queue_filter(request)
    queue = review.review_queue(campaign=campaign, reviewer_id=request.user.pk, filters=filters)
    page = Paginator(queue.entries, PAGE_SIZE).get_page(request.GET.get("page"))
    members = (
        campaign.memberships.select_related("user")
        .order_by("user__username")
        .values_list("user_id", "user__username")
    )
    query = "&".join(f"{k}={v}" for k, v in shown.items() if v)
    return render(
        request,
        "dashboard/review_queue.html",
        {
            "campaign": campaign,
            "here": "Review",
            "queue": queue,
            "page": page,
            "shown": shown,
            "members": list(members),
            "query": query,
        },
    )


def _adjudication_posted(request: HttpRequest, review_: review.TaskReview) -> dict[str, Any]:
    """The service's arguments from the review page's forms."""
    decision = request.POST.get("decision", "")
    posted: dict[str, Any] = {"decision": decision, "note": request.POST.get("note", "")}
    if decision == "labeller":
        ranking = request.POST.get("ranking", "")
        posted["ranking"] = int(ranking) if ranking.isdigit() and int(ranking) <= MAX_ID else 0
    if decision == "written":
        posted["items"] = [
            {"completion": c.completion_id, "rank": _posted_rank(request, c.completion_id)}
            for c in review_.completions
        ]
    return posted


def _review_error(exc: ServiceError, shown: review.TaskReview) -> str:
    """A service's refusal in the page's words: ``items[1].rank`` is completion B's rank."""
    if not exc.errors:
        return exc.message[:1].upper() + exc.message[1:]
    parts = []
    for field, reasons in exc.errors.items():
        match = re.fullmatch(r"items\[(\d+)\](?:\.(\w+))?", field or "")
        if match and int(match[1]) < len(shown.completions):
            field = f"{match[2] or 'completion'} of {shown.completions[int(match[1])].letter}"
        parts.append(f"{field}: {'; '.join(reasons)}")
    return "; ".join(parts)


@dashboard_required
@require_http_methods(["GET", "POST"])
def review_task(request: HttpRequest, campaign_id: int, task_id: int) -> HttpResponse:
    """One task's review: every labeller's ranking side by side with time and comment, the
    consensus, the reward model's scores (a panel of the training app, when a model exists),
    and the three decisions: accept the consensus, pick a labeller's ranking, write one."""
    campaign = _campaign(request, campaign_id, permissions.REVIEW)
    task = _task(campaign, task_id)
    shown = review.task_review(task=task, reviewer_id=request.user.pk)
    error, status = "", 200
    if request.method == "POST":
        try:
            services.task_adjudicate(
                reviewer=request.user, task=task, **_adjudication_posted(request, shown)
            )
        except ServiceError as exc:
            error = _review_error(exc, shown)
            status = 403 if exc.status_code == 403 else 400
        else:
            messages.success(request, f"Task {task.pk} adjudicated.")
            filters, _ = _queue_filter(request)
            queue = review.review_queue(
                campaign=campaign, reviewer_id=request.user.pk, filters=filters
            )
            if queue.entries:
                return redirect(
                    "dashboard:review-task",
                    campaign_id=campaign.pk,
                    task_id=queue.entries[0].task_id,
                )
            return redirect("dashboard:review", campaign_id=campaign.pk)
    labels = {r.ranking_id: r.labels for r in shown.rankings}
    adjudicated = shown.adjudication.labels if shown.adjudication else {}
    proposed = adjudicated or shown.consensus
    rows = [
        {
            "completion": c,
            "labels": [_label(labels[r.ranking_id].get(c.completion_id)) for r in shown.rankings],
            "consensus": _label(shown.consensus.get(c.completion_id)) if shown.rankings else "—",
            "adjudicated": _label(adjudicated.get(c.completion_id)) if adjudicated else "",
            "proposed": str(proposed.get(c.completion_id, c.position + 1)),
        }
        for c in shown.completions
    ]
    n = len(shown.completions)
    return render(
        request,
        "dashboard/review_task.html",
        {
            "campaign": campaign,
            "task": task,
            "here": f"Review of task {task.pk}",
            "review": shown,
            "rows": rows,
            "error": error,
            "note": request.POST.get("note", "") if error else "",
            "rank_choices": [str(r) for r in range(1, n + 1)]
            + ([FAIL] if campaign.allow_fail else []),
            **panels("review_task", request, campaign=campaign, task=task, review=shown),
        },
        status=status,
    )
