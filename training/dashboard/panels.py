"""The training app's sections on the annotation dashboard's pages (``DASHBOARD_PANELS``)."""

from __future__ import annotations

import contextlib

from django import forms as django_forms
from django.core.cache import cache
from django.http import HttpRequest
from django.urls import reverse

from annotation import permissions
from annotation.models import Campaign
from config.dashboard import Panel
from training import rounds, selectors
from training.dashboard import forms
from training.models import ModelVersion, TrainingJob


def campaign(request: HttpRequest, *, campaign: Campaign) -> Panel | None:
    """The campaign page: its latest jobs, its round, and the buttons that start jobs (for a
    team's managers and trainers; nothing for those who run only this campaign)."""
    if not permissions.sees_training(request.user):
        return None
    rnd = selectors.round_list(user=request.user).filter(campaign=campaign).first()
    return Panel(
        "dashboard/panels/campaign_training.html",
        {
            "trains": permissions.can(request.user, permissions.TRAIN, campaign.team),
            "jobs": selectors.training_job_list(user=request.user).filter(campaign=campaign)[:10],
            "round": rnd,
            "running": rounds.round_busy(rnd) if rnd is not None else None,
            "state": rounds.round_state(rnd) if rnd is not None else None,
        },
    )


def campaign_import(request: HttpRequest, *, campaign: Campaign) -> Panel | None:
    """The import page: "generate completions from a policy" for this campaign's prompts (for
    those who may train in its team)."""
    if not permissions.can(request.user, permissions.TRAIN, campaign.team):
        return None
    form = forms.TrainingJobForm(
        initial={"campaign_ids": [campaign], "target_campaign": campaign},
        kind=TrainingJob.Kind.GENERATE,
        user=request.user,
    )
    # Here the prompts and the target are this campaign; errors come back on the full form.
    del form.fields["round"]
    form.fields["campaign_ids"].widget = django_forms.MultipleHiddenInput()
    form.fields["target_campaign"].widget = django_forms.HiddenInput()
    return Panel(
        "dashboard/panels/campaign_generate.html",
        {
            "form": form,
            "url": reverse("training-dashboard:job-create", args=[TrainingJob.Kind.GENERATE]),
        },
    )


# The reward model last loaded for the review page's scores: (path, model). One at a time, so a
# web process that has torch (the trainer image; not the web image) holds at most one model.
_LOADED: dict[str, object] = {}
SCORES_CACHE_SECONDS = 24 * 3600


def _reward_scores(version: ModelVersion, review) -> tuple[list[float] | None, str]:
    """The normalised scores of the task's completions in display order, or None and why."""
    key = f"review-scores:{version.pk}:{review.task_id}"
    with contextlib.suppress(Exception):
        hit = cache.get(key)
        if hit is not None:
            return hit, ""
    try:
        from training.ml.reward_model import load_reward_model  # torch: not in the web image
    except ImportError:
        return None, (
            "scoring needs torch, which this web process does not have (the trainer image "
            "does); the scores are not shown"
        )
    try:
        model = _LOADED.get(version.path)
        if model is None:
            _LOADED.clear()
            model = _LOADED[version.path] = load_reward_model(version.path, device="cpu")
        prompt = review.messages or review.prompt
        scores = model.score([(prompt, c.text) for c in review.completions], batch_size=8)
    except Exception as exc:  # a missing or broken model directory must not break the page
        return None, f"the reward model could not score this task ({type(exc).__name__})"
    with contextlib.suppress(Exception):
        cache.set(key, scores, SCORES_CACHE_SECONDS)
    return scores, ""


def review_task(request: HttpRequest, *, campaign: Campaign, task, review) -> Panel | None:
    """The review page: the newest reward model of the campaign's team scores the task's
    completions (normalised: mean 0, std 1 on its reference samples), so a reviewer sees where
    the model stands; nothing when the team has no reward model."""
    version = (
        ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD, team=campaign.team)
        .order_by("-created_at", "-id")
        .first()
    )
    if version is None or not review.completions:
        return None
    scores, unavailable = _reward_scores(version, review)
    rows = []
    if scores is not None:
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        rank = {i: position + 1 for position, i in enumerate(order)}
        rows = [
            {"letter": c.letter, "score": scores[i], "rank": rank[i]}
            for i, c in enumerate(review.completions)
        ]
    return Panel(
        "dashboard/panels/review_scores.html",
        {"version": version, "rows": rows, "unavailable": unavailable},
    )
