"""Browser pages for labellers. Data comes from the same selectors and services as the API.

The task page is a shell plus one JavaScript module (static/annotation/label.js) that talks to
the API; the page views only decide which page to show: the guidelines gate, the task, or a
plain message (nothing left, campaign paused, task already finished).
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Avg, Count
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods

from annotation import review, selectors, services
from annotation.api.serializers import AssignmentSerializer
from annotation.errors import Busy, Conflict, NotFound, PermissionDenied
from annotation.models import Assignment, Campaign
from annotation.rendering import render_markdown

MAX_ID = 2**62  # larger path ids cannot exist (and overflow PostgreSQL's bigint)


def _campaign_or_404(request: HttpRequest, campaign_id: int) -> Campaign:
    if campaign_id > MAX_ID:
        raise Http404("campaign not found")
    try:
        return selectors.campaign_get_for(user=request.user, campaign_id=campaign_id)
    except NotFound as exc:
        raise Http404(exc.message) from exc


def _gate(campaign: Campaign, next_url: str) -> HttpResponseRedirect:
    url = reverse("annotation:guidelines", args=[campaign.pk])
    return redirect(f"{url}?{urlencode({'next': next_url})}")


def _message(request: HttpRequest, *, title: str, text: str, campaign=None, status: int = 200):
    return render(
        request,
        "annotation/message.html",
        {"title": title, "text": text, "campaign": campaign},
        status=status,
    )


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The campaigns this user labels for, with their own progress."""
    rows = []
    for campaign in selectors.campaign_list_for(user=request.user):
        mine = selectors.labeller_progress(
            campaign=campaign, users=[request.user], as_labeller=True
        )
        guideline = selectors.current_guideline(campaign=campaign)
        rows.append(
            {
                "campaign": campaign,
                "progress": mine[0] if mine else None,
                "guideline_version": guideline.version if guideline else None,
                "needs_ack": not selectors.guideline_acknowledged(
                    user=request.user, guideline=guideline
                ),
            }
        )
    return render(request, "annotation/home.html", {"rows": rows})


@login_required
@require_http_methods(["GET", "POST"])
def guidelines(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """The campaign's current guidelines, rendered; POST acknowledges the version shown."""
    campaign = _campaign_or_404(request, campaign_id)
    guideline = selectors.current_guideline(campaign=campaign)
    label_url = reverse("annotation:label", args=[campaign.pk])
    next_url = request.POST.get("next") or request.GET.get("next") or label_url
    if not url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        next_url = label_url
    changed = False
    if request.method == "POST" and guideline is not None:
        if request.POST.get("version") == str(guideline.version):
            services.guideline_acknowledge(user=request.user, guideline=guideline)
            return HttpResponseRedirect(next_url)
        changed = True  # a new version was published while the labeller was reading
    return render(
        request,
        "annotation/guidelines.html",
        {
            "campaign": campaign,
            "guideline": guideline,
            "html": render_markdown(guideline.text) if guideline else "",
            "acknowledged": selectors.guideline_acknowledged(
                user=request.user, guideline=guideline
            ),
            "changed": changed,
            "next": next_url,
        },
    )


@login_required
@require_GET
def label(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """Continue the labeller's open task in this campaign, or hand them a new one."""
    campaign = _campaign_or_404(request, campaign_id)
    here = reverse("annotation:label", args=[campaign.pk])
    try:  # the service checks membership, then the guidelines: its refusals say which
        assignment = services.task_assign_next(labeller=request.user, campaign=campaign)
    except PermissionDenied as exc:
        if exc.code == "guidelines_not_acknowledged":
            return _gate(campaign, here)
        if exc.code == "onboarding_failed":
            return _message(
                request,
                title="Qualification not passed",
                text=exc.message.capitalize() + ".",
                campaign=campaign,
                status=403,
            )
        return _message(
            request, title="Not a labeller here", text=exc.message, campaign=campaign, status=403
        )
    except Busy as exc:
        return _message(request, title="Busy", text=exc.message, campaign=campaign, status=503)
    except Conflict as exc:
        return _message(
            request,
            title="No tasks right now",
            text=exc.message.capitalize() + ".",
            campaign=campaign,
        )
    if assignment is None:
        return _message(
            request,
            title="All done",
            text="You have ranked every task available to you in this campaign. Thank you!",
            campaign=campaign,
        )
    return redirect("annotation:assignment", assignment_id=assignment.pk)


def _page_config(request: HttpRequest, mine: Assignment, campaign: Campaign) -> dict:
    """What the task page's script starts from: the task, today's pace and its URLs."""
    start_of_day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    today = (
        selectors.ranking_list_for(user=request.user, campaign_id=campaign.pk)
        .filter(labeller=request.user, created_at__gte=start_of_day)
        .aggregate(count=Count("id"), avg_ms=Avg("time_spent_ms"))
    )
    return {
        "assignment": AssignmentSerializer(mine).data,
        "campaign": {"id": campaign.pk, "name": campaign.name},
        "today": {"count": today["count"], "avg_ms": round(today["avg_ms"] or 0)},
        "urls": {
            "home": reverse("annotation:home"),
            "history": reverse("annotation:history"),
            "label": reverse("annotation:label", args=[campaign.pk]),
            "guidelines": reverse("annotation:guidelines", args=[campaign.pk]),
            "assignment": reverse("annotation:assignment", args=[0]).replace("/0/", "/{id}/"),
            "ranking": reverse("assignment-ranking", args=[0]).replace("/0/", "/{id}/"),
            "skip": reverse("assignment-skip", args=[0]).replace("/0/", "/{id}/"),
            "next_task": reverse("campaign-next-task", args=[campaign.pk]),
        },
    }


@login_required
@require_GET
def assignment(request: HttpRequest, assignment_id: int) -> HttpResponse:
    """The task page for one of the labeller's own assignments; 404 for anyone else's."""
    if assignment_id > MAX_ID:
        raise Http404("assignment not found")
    try:
        mine = selectors.assignment_get_for_labeller(
            labeller=request.user, assignment_id=assignment_id
        )
    except NotFound as exc:
        raise Http404(exc.message) from exc
    campaign = mine.campaign
    guideline = selectors.current_guideline(campaign=campaign)
    if mine.status != Assignment.Status.ASSIGNED:
        text = "It is no longer open for ranking. Continue with your next task."
        if mine.status == Assignment.Status.SUBMITTED:
            text += " To change your ranking, edit it from your rankings."
        return _message(
            request,
            title=f"This task is {mine.get_status_display().lower()}",
            text=text,
            campaign=campaign,
        )
    if not selectors.guideline_acknowledged(user=request.user, guideline=guideline):
        return _gate(campaign, request.path)
    config = _page_config(request, mine, campaign)
    return render(
        request,
        "annotation/label.html",
        {
            "campaign": campaign,
            "guideline": guideline,
            "guideline_html": render_markdown(guideline.text) if guideline else "",
            "config": config,
        },
    )


HISTORY_PAGE = 25


@login_required
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    """The labeller's own rankings, newest first, searchable (prompt, completions, comment) and
    by campaign: each editable while its campaign is open and nobody reviewed its task; a
    reviewed one shows where the adjudication differed from them (their labels and the
    decision's only)."""
    query = request.GET.get("q", "")[:200]
    campaign_id = request.GET.get("campaign", "")
    campaign = None
    if campaign_id.isdigit() and int(campaign_id) <= MAX_ID:
        campaign = (
            selectors.campaign_list_for(user=request.user).filter(pk=int(campaign_id)).first()
        )
    rankings = selectors.ranking_history_for(
        labeller=request.user, query=query, campaign_id=campaign.pk if campaign else None
    )
    page = Paginator(rankings, HISTORY_PAGE).get_page(request.GET.get("page"))
    reviewed = {
        f.ranking_id: f
        for f in review.labeller_feedback(labeller_id=request.user.pk)
        if any(r.pk == f.ranking_id for r in page.object_list)
    }
    rows = [
        {
            "ranking": r,
            "feedback": reviewed.get(r.pk),
            "editable": not r.reviewed and r.campaign.status != Campaign.Status.CLOSED,
        }
        for r in page.object_list
    ]
    campaigns = selectors.campaign_list_for(user=request.user).filter(
        rankings__labeller=request.user
    )
    search = urlencode({k: v for k, v in (("q", query), ("campaign", campaign_id)) if v})
    return render(
        request,
        "annotation/history.html",
        {
            "rows": rows,
            "page": page,
            "query": query,
            "campaign": campaign,
            "campaigns": campaigns.distinct().order_by("name"),
            "search": search,
        },
    )


@login_required
@require_GET
def assignment_edit(request: HttpRequest, assignment_id: int) -> HttpResponse:
    """The task page again for one of the labeller's submitted rankings, to edit it (a new
    version: ``PUT /api/assignments/{id}/ranking/``); 404 for anyone else's."""
    if assignment_id > MAX_ID:
        raise Http404("assignment not found")
    try:
        mine = selectors.assignment_get_for_labeller(
            labeller=request.user, assignment_id=assignment_id
        )
    except NotFound as exc:
        raise Http404(exc.message) from exc
    campaign = mine.campaign
    ranking = selectors.ranking_history_for(labeller=request.user).filter(assignment=mine).first()
    if ranking is None:
        return _message(
            request,
            title="Nothing to edit",
            text="This task has no ranking of yours to edit.",
            campaign=campaign,
        )
    if ranking.reviewed or campaign.status == Campaign.Status.CLOSED:
        why = "a reviewer has adjudicated it" if ranking.reviewed else "the campaign is closed"
        return _message(
            request,
            title="This ranking can no longer change",
            text=f"It stays as you submitted it: {why}.",
            campaign=campaign,
        )
    guideline = selectors.current_guideline(campaign=campaign)
    config = _page_config(request, mine, campaign)
    config["edit"] = {
        "ranking": ranking.pk,
        "version": ranking.version,
        "items": [[item.completion_id, item.label] for item in ranking.items.all()],
        "comment": ranking.comment,
        "strength": ranking.strength or [],
        "justification": ranking.justification,
    }
    return render(
        request,
        "annotation/label.html",
        {
            "campaign": campaign,
            "guideline": guideline,
            "guideline_html": render_markdown(guideline.text) if guideline else "",
            "config": config,
            "editing": ranking,
        },
    )
