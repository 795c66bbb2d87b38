"""Browser pages for labellers. Data comes from the same selectors as the API."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from annotation import selectors


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The campaigns this user labels for, with their own progress."""
    rows = []
    for campaign in selectors.campaign_list_for(user=request.user):
        mine = selectors.labeller_progress(campaign=campaign, users=[request.user])
        guideline = selectors.current_guideline(campaign=campaign)
        rows.append(
            {
                "campaign": campaign,
                "progress": mine[0] if mine else None,
                "guideline_version": guideline.version if guideline else None,
            }
        )
    return render(request, "annotation/home.html", {"rows": rows})
