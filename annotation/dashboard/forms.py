"""Dashboard forms. They check the shape of the input only; the rules (N in 2..9, overlap >= 1,
legal status moves, unique usernames, ...) are the services', whose errors the views put back
on the form next to the field they name (:func:`config.dashboard.add_service_error`)."""

from __future__ import annotations

import re

from django import forms
from django.contrib.auth import get_user_model

from annotation.exports import AGGREGATES, FAIL_POLICIES
from annotation.models import Campaign, Membership, Team


class CampaignForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    completions_per_task = forms.IntegerField(
        label="Completions per task (N)",
        help_text="How many completions a labeller ranks in each task (2 to 9). Fixed once "
        "tasks are imported.",
    )
    overlap = forms.IntegerField(
        label="Overlap (k)", help_text="How many different labellers rank each task."
    )
    allow_ties = forms.BooleanField(
        required=False, initial=True, help_text="Labellers may put completions on the same rank."
    )
    allow_fail = forms.BooleanField(
        label="Allow F (fail)",
        required=False,
        initial=True,
        help_text="Labellers may mark a completion F: nonsensical or irrelevant.",
    )
    allow_empty_completions = forms.BooleanField(
        label="Imports: accept empty completions",
        required=False,
        help_text="Real data has them; each one is counted as a warning. Off: refused.",
    )
    allow_identical_completions = forms.BooleanField(
        label="Imports: accept identical completions of one prompt",
        required=False,
        help_text="Two systems gave the same output; each one is counted as a warning. Off: "
        "refused.",
    )
    assignment_provenance = forms.BooleanField(
        label="Show labellers provenance",
        required=False,
        help_text="The prompt's external id and metadata and each completion's source (the "
        "model) on the labeller's task. Off: labelling is blind, and gold prompts' ids or "
        "sources cannot tell gold tasks apart.",
    )
    render_markdown = forms.BooleanField(
        label="Show prompts and completions as markdown",
        required=False,
        help_text="Bold, lists, code and tables rendered (sanitised as the guidelines are). "
        "Off: plain text, code fences shown monospace.",
    )
    strength_scale = forms.ChoiceField(
        label="Preference strength",
        choices=Campaign.StrengthScale.choices,
        initial=Campaign.StrengthScale.NONE,
        required=False,
        help_text="Ask how much better, per adjacent rank gap, with keys on the task page.",
    )
    round_number = forms.IntegerField(
        label="Round", min_value=0, initial=0, help_text="The RLHF round this campaign labels."
    )
    # Quality controls (adaptive overlap, gold tasks, task order); help from the model fields.
    overlap_min = forms.IntegerField(
        label="Adaptive overlap: start at k_min", required=False, min_value=1
    )
    reopen_below = forms.FloatField(label="Reopen a task below this agreement", required=False)
    gold_rate = forms.FloatField(label="Share of gold tasks", required=False)
    onboarding_gold_tasks = forms.IntegerField(
        label="Onboarding: gold tasks first (M)", required=False
    )
    onboarding_threshold = forms.FloatField(label="Onboarding: agreement needed", required=False)
    task_order = forms.ChoiceField(choices=Campaign.TaskOrder.choices, required=False)
    order_seed = forms.IntegerField(label="Seed of the random order", required=False)

    ADVANCED = (
        "overlap_min",
        "reopen_below",
        "gold_rate",
        "onboarding_gold_tasks",
        "onboarding_threshold",
        "task_order",
        "order_seed",
    )

    def __init__(self, *args, editing: bool = False, teams=None, **kwargs) -> None:
        """``teams``: where a new campaign may go; the field shows only with a choice to make
        (one team is taken as it is, none is the services' default team)."""
        super().__init__(*args, **kwargs)
        if teams is not None and len(teams) > 1:
            self.fields["team"] = forms.ModelChoiceField(
                queryset=Team.objects.filter(pk__in=[t.pk for t in teams]),
                help_text="The team whose managers run the campaign.",
            )
        for name in self.ADVANCED:
            model_field = Campaign._meta.get_field(name)
            self.fields[name].help_text = model_field.help_text
            if not self.fields[name].initial and model_field.has_default():
                self.fields[name].initial = model_field.get_default()
        if editing:  # the round is set when the campaign is created
            del self.fields["round_number"]

    @property
    def advanced_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.ADVANCED]

    @property
    def advanced_errors(self) -> bool:
        return any(name in self.errors for name in self.ADVANCED)

    def clean(self) -> dict:
        """Quality controls left empty keep their value (the default for a new campaign);
        an empty k_min turns adaptive overlap off."""
        data = super().clean()
        for name in self.ADVANCED:
            if name != "overlap_min" and data.get(name) in (None, ""):
                data.pop(name, None)
        if not data.get("strength_scale"):  # not sent: kept as it is
            data.pop("strength_scale", None)
        return data


class StatusForm(forms.Form):
    status = forms.ChoiceField(choices=Campaign.Status.choices)


class MembersForm(forms.Form):
    usernames = forms.CharField(
        label="Add members",
        help_text="Existing accounts: usernames separated by commas or spaces.",
    )
    role = forms.ChoiceField(
        choices=Membership.Role.choices,
        initial=Membership.Role.LABELLER,
        required=False,
        help_text="Everyone labels; reviewers also review tasks; managers also run the campaign. "
        "Members already here take this role.",
    )

    def clean_usernames(self) -> list:
        names = [n for n in re.split(r"[\s,]+", self.cleaned_data["usernames"]) if n]
        if not names:
            raise forms.ValidationError("Give at least one username.")
        if len(names) > 500:
            raise forms.ValidationError("At most 500 usernames at once.")
        users = list(get_user_model().objects.filter(username__in=names))
        missing = sorted(set(names) - {u.username for u in users})
        if missing:
            raise forms.ValidationError(
                f"No account called {', '.join(missing)}. Invite new labellers below."
            )
        return users


class RemoveMemberForm(forms.Form):
    user = forms.IntegerField(min_value=1)


class InviteForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.CharField(max_length=254, required=False, label="Email (optional)")


class GuidelineForm(forms.Form):
    text = forms.CharField(
        label="Guidelines (markdown)",
        widget=forms.Textarea(attrs={"rows": 22, "spellcheck": "true"}),
        strip=False,
        required=False,  # the service refuses empty guidelines with its own message
        max_length=200_000,
    )


class PreviewForm(forms.Form):
    text = forms.CharField(required=False, strip=False, max_length=200_000)


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL or CSV; all or nothing: any error stores nothing.")
    format = forms.ChoiceField(
        choices=[("", "from the file name"), ("jsonl", "JSONL"), ("csv", "CSV")],
        required=False,
    )


class PairsExportForm(forms.Form):
    """The options of the pairs export; the form submits (GET) to the API endpoint."""

    aggregate = forms.ChoiceField(choices=[(a, a) for a in AGGREGATES], initial="none")
    ties = forms.BooleanField(required=False, label="Export ties (marked tie)")
    fail_policy = forms.ChoiceField(
        choices=[(p, p) for p in FAIL_POLICIES], initial="drop", label="F items"
    )


class LabellerPageForm(forms.Form):
    page = forms.IntegerField(min_value=1, required=False)
