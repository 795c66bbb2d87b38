"""Guideline versions and labellers' acknowledgements of them (a labeller must acknowledge
the current version before they are handed a task)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser as User
from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import (
    Campaign,
    Guideline,
    GuidelineAcknowledgement,
    Membership,
)


@transaction.atomic
def guideline_publish(*, campaign: Campaign, text: str, created_by: User | None) -> Guideline:
    """Publish a new guideline version; every labeller must acknowledge it before new tasks."""
    if not text or not text.strip():
        raise InvalidInput("the guidelines are empty", field="text")
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    latest = campaign.guidelines.order_by("-version").values_list("version", flat=True).first()
    guideline = Guideline.objects.create(
        campaign=campaign, version=(latest or 0) + 1, text=text, created_by=created_by
    )
    campaign.current_guideline = guideline
    campaign.save(update_fields=["current_guideline", "updated_at"])
    return guideline


@transaction.atomic
def guideline_acknowledge(*, user: User, guideline: Guideline) -> GuidelineAcknowledgement:
    """Record that the user read this version; their membership points at the newest one."""
    acknowledgement, _ = GuidelineAcknowledgement.objects.get_or_create(
        guideline=guideline, user=user
    )
    Membership.objects.filter(campaign_id=guideline.campaign_id, user=user).exclude(
        acknowledged_guideline__version__gte=guideline.version
    ).update(acknowledged_guideline=guideline)
    return acknowledgement
