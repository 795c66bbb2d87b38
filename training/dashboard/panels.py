"""The training app's sections on the annotation dashboard's pages (``DASHBOARD_PANELS``)."""

from __future__ import annotations

from django import forms as django_forms
from django.http import HttpRequest
from django.urls import reverse

from annotation import permissions
from annotation.models import Campaign
from config.dashboard import Panel
from training import rounds, selectors
from training.dashboard import forms
from training.models import TrainingJob


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
