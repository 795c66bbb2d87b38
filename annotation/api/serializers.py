"""Input serializers check shapes; output serializers shape responses. Rules live in services."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotation.exports import AGGREGATES, FAIL_POLICIES
from annotation.models import (
    MAX_COMPLETIONS,
    MIN_COMPLETIONS,
    Assignment,
    Campaign,
    Completion,
    Guideline,
    ImportJob,
    Membership,
    Ranking,
    Webhook,
)
from annotation.pairs import FAIL
from annotation.rendering import render_markdown
from annotation.selectors import assignment_completions

MAX_ID = 2**62  # ids above this cannot exist; refusing them early keeps them out of SQL


class InputSerializer(serializers.Serializer):
    """A request body: a key it does not know answers 400 naming it (a misspelt or read-only
    field must not pass as "nothing to change"), and a list longer than its field's
    ``max_length`` is refused before any of its items is checked."""

    unknown_field_message = "unknown field"
    ignored_fields = frozenset({"csrfmiddlewaretoken"})  # a form post carries it beside its fields

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = set(self.fields) | self.ignored_fields
            errors = {name: [self.unknown_field_message] for name in sorted(set(data) - known)}
            for name, field in self.fields.items():
                limit = getattr(field, "max_length", None)
                if isinstance(field, serializers.ListField) and limit is not None:
                    value = data.get(name)
                    if isinstance(value, list) and len(value) > limit:
                        errors[name] = [f"Ensure this field has no more than {limit} elements."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class QuerySerializer(serializers.Serializer):
    """Query parameters. Others are ignored (``page``, ``format``, a cache buster); a NUL
    character in one of these answers 400 naming it before any field or query reads it."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            nul = sorted(
                name for name in self.fields if any("\x00" in v for v in _values(data, name))
            )
            if nul:
                raise serializers.ValidationError(
                    {name: ["contains a NUL character"] for name in nul}
                )
        return super().to_internal_value(data)


def _values(data: Mapping, name: str) -> list[str]:
    values = data.getlist(name) if hasattr(data, "getlist") else [data.get(name)]
    return [v for v in values if isinstance(v, str)]


class ObjectIdField(serializers.PrimaryKeyRelatedField):
    """A primary-key reference that refuses out-of-range ids with a 400 instead of letting the
    database raise an overflow."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("incorrect_type", data_type=type(data).__name__)
        try:
            number = int(data)
        except ValueError:
            self.fail("incorrect_type", data_type=type(data).__name__)
        if not 1 <= number <= MAX_ID:
            self.fail("does_not_exist", pk_value=data)
        return super().to_internal_value(number)


# --- Campaigns ----------------------------------------------------------------------------------


class CampaignSerializer(serializers.ModelSerializer):
    guideline_version = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = Campaign
        fields = [
            "id",
            "team",
            "name",
            "description",
            "status",
            "completions_per_task",
            "overlap",
            "allow_ties",
            "allow_fail",
            "render_markdown",
            "strength_scale",
            "round_number",
            "guideline_version",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


CAMPAIGN_ADMIN_FIELDS = [
    "allow_empty_completions",
    "allow_identical_completions",
    "assignment_provenance",
    "overlap_min",
    "reopen_below",
    "gold_rate",
    "onboarding_gold_tasks",
    "onboarding_threshold",
    "task_order",
    "order_seed",
]


class CampaignAdminSerializer(CampaignSerializer):
    """What admins see of a campaign: also the gold, onboarding, adaptive-overlap and task-order
    settings (labellers never see them: nothing tells them gold tasks exist)."""

    class Meta(CampaignSerializer.Meta):
        fields = [*CampaignSerializer.Meta.fields, *CAMPAIGN_ADMIN_FIELDS]
        read_only_fields = fields


class CampaignQualitySettings(InputSerializer):
    """The gold / onboarding / adaptive overlap / task order settings, shared by create and
    update (update makes every field optional)."""

    overlap_min = serializers.IntegerField(
        min_value=1,
        max_value=100,
        allow_null=True,
        required=False,
        help_text="k_min of adaptive overlap (null: fixed overlap); tasks grow to `overlap`.",
    )
    reopen_below = serializers.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        help_text="Adaptive overlap: reopen a task whose strict pairwise agreement is below this.",
    )
    gold_rate = serializers.FloatField(
        min_value=0, max_value=1, required=False, help_text="Share of gold tasks in each queue."
    )
    onboarding_gold_tasks = serializers.IntegerField(
        min_value=0,
        max_value=1000,
        required=False,
        help_text="M gold tasks a new labeller ranks (alone) before real ones; 0: no onboarding.",
    )
    onboarding_threshold = serializers.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        help_text="Agreement with the gold references needed to pass onboarding.",
    )
    task_order = serializers.ChoiceField(
        choices=Campaign.TaskOrder.choices,
        required=False,
        help_text="sequential, random (seeded) or uncertainty (reward model).",
    )
    order_seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False)
    render_markdown = serializers.BooleanField(
        required=False,
        help_text="Show prompts and completions as markdown (sanitised as the guidelines are).",
    )
    strength_scale = serializers.ChoiceField(
        choices=Campaign.StrengthScale.choices,
        required=False,
        help_text="none, llama2 (four levels) or helpsteer (-3..3 with a justification): how "
        "much better, asked per adjacent rank gap.",
    )
    allow_empty_completions = serializers.BooleanField(
        required=False,
        help_text="Imports accept empty completions, counted as warnings (default: refused).",
    )
    allow_identical_completions = serializers.BooleanField(
        required=False,
        help_text="Imports accept identical completions of one prompt, counted as warnings "
        "(default: refused).",
    )
    assignment_provenance = serializers.BooleanField(
        required=False,
        help_text="Assignments show labellers the prompt's external id and metadata and each "
        "completion's source (default off: blind, and gold ids or sources could tell).",
    )


class CampaignCreateSerializer(CampaignQualitySettings):
    team = serializers.IntegerField(
        min_value=1,
        max_value=2**62,
        required=False,
        help_text="The team that runs the campaign (one you manage); needed only when you "
        "manage several.",
    )
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    completions_per_task = serializers.IntegerField(
        min_value=MIN_COMPLETIONS, max_value=MAX_COMPLETIONS, default=4
    )
    overlap = serializers.IntegerField(min_value=1, max_value=100, default=3)
    allow_ties = serializers.BooleanField(default=True)
    allow_fail = serializers.BooleanField(default=True)
    round_number = serializers.IntegerField(min_value=0, max_value=100_000, default=0)


class CampaignUpdateSerializer(CampaignQualitySettings):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    completions_per_task = serializers.IntegerField(
        min_value=MIN_COMPLETIONS, max_value=MAX_COMPLETIONS, required=False
    )
    overlap = serializers.IntegerField(min_value=1, max_value=100, required=False)
    allow_ties = serializers.BooleanField(required=False)
    allow_fail = serializers.BooleanField(required=False)


class CampaignStatusSerializer(InputSerializer):
    status = serializers.ChoiceField(choices=Campaign.Status.choices)


class MembersSerializer(InputSerializer):
    usernames = serializers.ListField(
        child=serializers.CharField(max_length=150), allow_empty=False, max_length=1000
    )
    role = serializers.ChoiceField(
        choices=Membership.Role.choices,
        required=False,
        help_text="Adding: the role these users get (new members default to labeller); "
        "members already there take this role when it is given.",
    )

    def validate_usernames(self, usernames: list[str]) -> list:
        users = list(get_user_model().objects.filter(username__in=usernames))
        missing = sorted(set(usernames) - {u.username for u in users})
        if missing:
            raise serializers.ValidationError(f"unknown user(s): {', '.join(missing)}")
        return users


class InviteAccountSerializer(InputSerializer):
    username = serializers.CharField(max_length=150)
    email = serializers.EmailField(required=False, allow_blank=True, default="")


class LabellersInviteSerializer(InputSerializer):
    accounts = InviteAccountSerializer(many=True, allow_empty=False, max_length=1000)
    campaigns = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        allow_empty=False,
        max_length=100,
        help_text="Campaigns the accounts join (you must be allowed to change each).",
    )
    role = serializers.ChoiceField(choices=Membership.Role.choices, default="labeller")


class InvitedAccountSerializer(serializers.Serializer):
    user = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField(allow_blank=True)
    password = serializers.CharField(
        help_text="One-time password, shown only in this answer; it must be changed at the "
        "first login."
    )


class LabellersInvitedSerializer(serializers.Serializer):
    campaigns = serializers.ListField(child=serializers.IntegerField())
    role = serializers.CharField()
    accounts = InvitedAccountSerializer(many=True)


class WebhookInputSerializer(InputSerializer):
    url = serializers.URLField(max_length=1000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Webhook.Event.choices),
        allow_empty=False,
        max_length=len(Webhook.Event.values),
    )


class WebhookSerializer(serializers.ModelSerializer):
    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "active", "created_at"]
        read_only_fields = fields


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        help_text="Signs every delivery (X-RLHF-Signature); shown only in this answer."
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class ImportSerializer(InputSerializer):
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=["jsonl", "csv"], required=False)


class CreatedTaskSerializer(serializers.Serializer):
    task = serializers.IntegerField()
    external_id = serializers.CharField(
        allow_blank=True, help_text="The prompt's id in the file (empty when it had none)."
    )


class ImportWarningsSerializer(serializers.Serializer):
    empty_completions = serializers.IntegerField()
    identical_completions = serializers.IntegerField()


class ImportResultSerializer(serializers.Serializer):
    prompts = serializers.IntegerField()
    tasks = serializers.IntegerField()
    completions = serializers.IntegerField()
    gold_tasks = serializers.IntegerField()
    created = CreatedTaskSerializer(
        many=True, help_text="Every task created, with its prompt's external id, in file order."
    )
    warnings = ImportWarningsSerializer(
        help_text="Empty and identical completions accepted because the campaign allows them."
    )


class RankingImportSerializer(InputSerializer):
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=["jsonl", "csv"], required=False)
    new_labellers = serializers.ChoiceField(
        choices=["inactive", "refuse"],
        default="inactive",
        help_text="Labellers with no account: created inactive, or the file refused.",
    )
    task_overlap = serializers.ChoiceField(
        choices=["campaign", "rankings"],
        default="campaign",
        help_text="campaign: at most the campaign's overlap per task; rankings: each task is "
        "for exactly the labellers who ranked it in the file.",
    )


class RankingImportResultSerializer(serializers.Serializer):
    rankings = serializers.IntegerField()
    tasks_created = serializers.IntegerField()
    tasks_matched = serializers.IntegerField(help_text="Existing tasks the rankings were added to.")
    prompts_created = serializers.IntegerField()
    completions_created = serializers.IntegerField()
    labellers_created = serializers.ListField(
        child=serializers.CharField(), help_text="Usernames of the accounts created (inactive)."
    )
    created = CreatedTaskSerializer(many=True)
    warnings = ImportWarningsSerializer()


class ImportErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    field = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class ImportJobSerializer(serializers.ModelSerializer):
    """A large import run by a worker: its stage, then what was stored or why nothing was."""

    campaign = serializers.IntegerField(source="campaign_id", read_only=True)
    result = serializers.SerializerMethodField()
    errors = ImportErrorSerializer(many=True, read_only=True)

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "campaign",
            "kind",
            "filename",
            "size",
            "status",
            "stage",
            "records",
            "result",
            "errors",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(
        {
            "oneOf": [
                {"$ref": "#/components/schemas/ImportResult"},
                {"$ref": "#/components/schemas/RankingImportResult"},
            ],
            "nullable": True,
        }
    )
    def get_result(self, job: ImportJob) -> dict | None:
        """What was stored: an import result of the job's ``kind``, or null until done."""
        return job.result_or_none


# --- Guidelines ---------------------------------------------------------------------------------


class GuidelineSerializer(serializers.ModelSerializer):
    class Meta:
        model = Guideline
        fields = ["id", "version", "text", "created_at"]
        read_only_fields = fields


class GuidelinePublishSerializer(InputSerializer):
    text = serializers.CharField(max_length=200_000, trim_whitespace=False)


class AcknowledgeSerializer(InputSerializer):
    version = serializers.IntegerField(min_value=1, max_value=MAX_ID)


# --- Assignments and rankings -------------------------------------------------------------------


class LabellerCompletionSerializer(serializers.ModelSerializer):
    """What a labeller sees of a completion: its text, and its source only where the campaign
    shows provenance (``assignment_provenance``; else ``""``)."""

    source = serializers.CharField(
        allow_blank=True,
        help_text="Where the completion came from (a model); empty unless the campaign shows "
        "labellers provenance.",
    )

    html = serializers.CharField(
        allow_null=True,
        help_text="The text as sanitised HTML where the campaign renders markdown; else null.",
    )

    class Meta:
        model = Completion
        fields = ["id", "text", "source", "html"]
        read_only_fields = fields


class AssignmentPromptSerializer(serializers.Serializer):
    text = serializers.CharField()
    messages = serializers.ListField(child=serializers.DictField(), allow_null=True)
    external_id = serializers.CharField(
        allow_blank=True,
        help_text="The prompt's id in the imported file; empty unless the campaign shows "
        "labellers provenance.",
    )
    metadata = serializers.DictField(
        help_text="The prompt's imported metadata; {} unless the campaign shows labellers "
        "provenance."
    )
    html = serializers.CharField(
        allow_null=True,
        help_text="The text as sanitised HTML where the campaign renders markdown; else null.",
    )
    messages_html = serializers.ListField(
        child=serializers.CharField(),
        allow_null=True,
        help_text="Each message's content as sanitised HTML (markdown campaigns with chat "
        "prompts); else null.",
    )


class AssignmentSerializer(serializers.ModelSerializer):
    """An assignment as the labeller page shows it. The fields document the shape (OpenAPI);
    :func:`assignment_body` builds it, since this is the labelling hot path.

    No task id: a gold task's id is the same for every labeller and follows the import order,
    so it would tell gold tasks from real ones; the assignment's own id names the work."""

    campaign = serializers.IntegerField(source="campaign_id", read_only=True)
    prompt = AssignmentPromptSerializer(read_only=True)
    completions = LabellerCompletionSerializer(many=True, read_only=True)
    allow_ties = serializers.BooleanField(source="campaign.allow_ties", read_only=True)
    allow_fail = serializers.BooleanField(source="campaign.allow_fail", read_only=True)
    render_markdown = serializers.BooleanField(
        source="campaign.render_markdown",
        read_only=True,
        help_text="Prompts and completions are shown as markdown (their `html`).",
    )
    strength_scale = serializers.CharField(
        source="campaign.strength_scale",
        read_only=True,
        help_text="none, llama2 or helpsteer: how much better the page asks (annotation.strength).",
    )

    class Meta:
        model = Assignment
        fields = [
            "id",
            "campaign",
            "status",
            "assigned_at",
            "lease_expires_at",
            "finished_at",
            "skip_reason",
            "allow_ties",
            "allow_fail",
            "render_markdown",
            "strength_scale",
            "prompt",
            "completions",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Assignment) -> dict:
        return assignment_body(instance)


_datetime = serializers.DateTimeField()


def _when(value) -> str | None:
    return None if value is None else _datetime.to_representation(value)


def assignment_body(assignment: Assignment) -> dict:
    """An assignment in :class:`AssignmentSerializer`'s shape: its campaign's rules, the
    prompt and the completions in the assignment's display order.

    The prompt's external id and metadata and each completion's source are filled only where
    the campaign shows labellers provenance (``Campaign.assignment_provenance``); otherwise the
    same keys hold ``""`` and ``{}`` for every task, gold or real, so none of them can tell a
    gold task apart (a gold prompt's id, or a source naming the gold file) or unblind the
    models behind the completions."""
    prompt = assignment.task.prompt
    campaign = assignment.campaign
    shown = campaign.assignment_provenance
    return {
        "id": assignment.pk,
        "campaign": assignment.campaign_id,
        "status": assignment.status,
        "assigned_at": _when(assignment.assigned_at),
        "lease_expires_at": _when(assignment.lease_expires_at),
        "finished_at": _when(assignment.finished_at),
        "skip_reason": assignment.skip_reason,
        "allow_ties": campaign.allow_ties,
        "allow_fail": campaign.allow_fail,
        "render_markdown": campaign.render_markdown,
        "strength_scale": campaign.strength_scale,
        "prompt": {
            "text": prompt.text,
            "messages": prompt.messages,
            "external_id": prompt.external_id if shown else "",
            "metadata": (prompt.metadata or {}) if shown else {},
            **_prompt_html(prompt, campaign.render_markdown),
        },
        "completions": [
            {
                "id": pk,
                "text": text,
                "source": source if shown else "",
                "html": render_markdown(text) if campaign.render_markdown else None,
            }
            for pk, text, source in assignment_completions(assignment=assignment)
        ],
    }


def _prompt_html(prompt, markdown: bool) -> dict:
    """The prompt's text and chat messages as sanitised HTML (``annotation.rendering``, as the
    guidelines are) where the campaign renders markdown; null otherwise."""
    if not markdown:
        return {"html": None, "messages_html": None}
    messages = prompt.messages if isinstance(prompt.messages, list) else None
    return {
        "html": render_markdown(prompt.text),
        "messages_html": None
        if messages is None
        else [
            render_markdown(
                m.get("content")
                if isinstance(m, dict) and isinstance(m.get("content"), str)
                else json.dumps(m.get("content") if isinstance(m, dict) else m)
            )
            for m in messages
        ],
    }


class AssignmentSummarySerializer(serializers.ModelSerializer):
    """One of your assignments (no task id: see :class:`AssignmentSerializer`)."""

    campaign = serializers.IntegerField(source="campaign_id", read_only=True)

    class Meta:
        model = Assignment
        fields = [
            "id",
            "campaign",
            "status",
            "assigned_at",
            "lease_expires_at",
            "finished_at",
        ]
        read_only_fields = fields


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1, "maximum": 9}, {"enum": ["F"]}]})
class LabelField(serializers.Field):
    """A rank 1..9 (1 = best; equal ranks tie) or "F" for fail."""

    default_error_messages = {"invalid": 'must be an integer rank or "F"'}

    def to_internal_value(self, data):
        if data == FAIL:
            return FAIL
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return data

    def to_representation(self, value):
        return value


class RankingItemInputSerializer(InputSerializer):
    completion = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    rank = LabelField()


class RankingInputSerializer(InputSerializer):
    # At most one item per completion, refused before any item is checked.
    items = RankingItemInputSerializer(many=True, allow_empty=False, max_length=MAX_COMPLETIONS)
    time_spent_ms = serializers.IntegerField(min_value=0, max_value=7 * 24 * 3600 * 1000)
    comment = serializers.CharField(
        required=False,
        allow_blank=True,
        allow_null=True,  # generated clients send null for an optional field they leave out
        max_length=5000,
        default="",
        help_text="optional; null is taken as no comment",
    )
    strength = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=3),
        required=False,
        allow_null=True,
        max_length=MAX_COMPLETIONS - 1,
        help_text="How much better, one level per gap between adjacent ranks (best first), on "
        "the campaign's `strength_scale`: llama2 0..3, helpsteer 1..3; none without a scale.",
    )
    justification = serializers.CharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=300,
        default="",
        help_text="One line saying why (helpsteer scale only).",
    )


class RankingItemSerializer(serializers.Serializer):
    completion = serializers.IntegerField(source="completion_id")
    rank = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.ANY)
    def get_rank(self, item) -> int | str:
        return item.label


class RankingSerializer(serializers.ModelSerializer):
    """A ranking. ``task`` only for those who view its campaign (context ``viewed``: the ids of
    those campaigns), null for a labeller reading their own: task ids would tell gold tasks
    apart (see :class:`AssignmentSerializer`)."""

    assignment = serializers.IntegerField(source="assignment_id", read_only=True)
    task = serializers.IntegerField(
        source="task_id",
        read_only=True,
        allow_null=True,
        help_text="Null for its labeller; the task for those who run or review the campaign.",
    )
    campaign = serializers.IntegerField(source="campaign_id", read_only=True)
    labeller = serializers.IntegerField(source="labeller_id", read_only=True)
    guideline_version = serializers.IntegerField(
        source="guideline.version", read_only=True, allow_null=True, default=None
    )
    items = RankingItemSerializer(many=True, read_only=True)
    strength = serializers.ListField(
        child=serializers.IntegerField(),
        read_only=True,
        allow_null=True,
        help_text="How much better, per gap between adjacent ranks (best first); null without "
        "a strength scale.",
    )

    class Meta:
        model = Ranking
        fields = [
            "id",
            "assignment",
            "task",
            "campaign",
            "labeller",
            "guideline_version",
            "time_spent_ms",
            "comment",
            "created_at",
            "version",
            "edited_at",
            "strength",
            "justification",
            "items",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Ranking) -> dict:
        data = super().to_representation(instance)
        if instance.campaign_id not in self.context.get("viewed", ()):
            data["task"] = None
        return data


def ranking_body(result) -> dict:
    """A just-submitted ranking in RankingSerializer's shape as its labeller sees it (no task
    id), built from what the service returned rather than read back from the database."""
    ranking = result.ranking
    return {
        "id": ranking.pk,
        "assignment": ranking.assignment_id,
        "task": None,
        "campaign": ranking.campaign_id,
        "labeller": ranking.labeller_id,
        "guideline_version": result.guideline_version,
        "time_spent_ms": ranking.time_spent_ms,
        "comment": ranking.comment,
        "created_at": _when(ranking.created_at),
        "version": ranking.version,
        "edited_at": _when(ranking.edited_at),
        "strength": ranking.strength,
        "justification": ranking.justification,
        "items": [{"completion": c, "rank": label} for c, label in result.labels.items()],
    }


class SkipSerializer(InputSerializer):
    reason = serializers.CharField(max_length=2000)


# --- Progress -----------------------------------------------------------------------------------


class CampaignProgressSerializer(serializers.Serializer):
    """Real (non-gold) tasks and their rankings; gold ones counted apart."""

    tasks = serializers.IntegerField()
    tasks_complete = serializers.IntegerField()
    tasks_in_progress = serializers.IntegerField()
    rankings = serializers.IntegerField()
    target_rankings = serializers.IntegerField()
    open_leases = serializers.IntegerField()
    gold_tasks = serializers.IntegerField()
    gold_rankings = serializers.IntegerField()


class LabellerProgressSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    submitted = serializers.IntegerField()
    skipped = serializers.IntegerField()
    open = serializers.IntegerField()
    remaining = serializers.IntegerField()
    submitted_today = serializers.IntegerField()


# --- Agreement, labeller quality and exports ----------------------------------------------------


class AgreementQuerySerializer(QuerySerializer):
    fail_policy = serializers.ChoiceField(
        choices=FAIL_POLICIES,
        default="rank_last",
        help_text="F items: a bottom tier (rank_last: F vs F is a tie) or left out (drop).",
    )
    resamples = serializers.IntegerField(
        min_value=0, max_value=10_000, default=1000, help_text="Bootstrap resamples of tasks."
    )
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, default=0)
    tasks = serializers.BooleanField(
        default=False, help_text="Also return per-task figures (paged: page, page_size)."
    )
    page = serializers.IntegerField(min_value=1, default=1)
    page_size = serializers.IntegerField(min_value=1, max_value=1000, default=100)


class LabellerQuerySerializer(QuerySerializer):
    fail_policy = serializers.ChoiceField(choices=FAIL_POLICIES, default="rank_last")
    resamples = serializers.IntegerField(min_value=0, max_value=10_000, default=1000)
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, default=0)


class PairsQuerySerializer(QuerySerializer):
    ties = serializers.BooleanField(
        default=False, help_text="Export tied completions as pairs marked tie (margin 0)."
    )
    fail_policy = serializers.ChoiceField(
        choices=FAIL_POLICIES,
        default="drop",
        help_text="F items give no pairs (drop) or lose to every ranked one (rank_last).",
    )
    aggregate = serializers.ChoiceField(
        choices=AGGREGATES,
        default="none",
        help_text="none: every labeller's pairs as they are; ranked_pairs / bradley_terry: "
        "pairs of the per-task consensus ranking; majority: per pair the majority direction. "
        "An adjudicated task's pairs are the reviewer's ranking's in every aggregate.",
    )
    provenance = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=200,
        help_text="Only tasks settled so: unanimous, majority, adjudicated, unresolved "
        "(comma-separated; default all).",
    )

    def validate_provenance(self, value: str) -> list[str]:
        return _provenances(value)

    format = serializers.ChoiceField(
        choices=["jsonl", "trl", "parquet"],
        default="jsonl",
        help_text="jsonl: the project's pairs (margin, messages, tie and provenance); trl: TRL's "
        "exact format as JSONL; parquet: TRL's format as Parquet with a fixed schema.",
    )
    style = serializers.ChoiceField(
        choices=["standard", "conversational"],
        required=False,
        help_text="trl/parquet: strings, or message lists (default: conversational when a "
        "prompt is a chat conversation).",
    )
    part = serializers.ChoiceField(
        choices=["pairs", "ties"],
        default="pairs",
        help_text="trl/parquet: the strict pairs, or the tie pairs (prompt, completion_a, "
        "completion_b), a file of their own.",
    )
    rlhf_columns = serializers.BooleanField(
        default=True,
        help_text="trl/parquet: the project's rlhf_* columns beside TRL's (false: left out).",
    )

    def validate(self, data: dict) -> dict:
        if data["format"] != "jsonl" and data["ties"]:
            raise serializers.ValidationError(
                {"ties": ["is for format=jsonl: TRL's formats keep ties in part=ties"]}
            )
        return data


class CampaignFilterSerializer(QuerySerializer):
    campaign = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_ID, help_text="Only this campaign's."
    )


class RankingsExportQuerySerializer(QuerySerializer):
    format = serializers.ChoiceField(choices=["jsonl", "csv"], default="jsonl")
    versions = serializers.ChoiceField(
        choices=["latest", "all"],
        default="latest",
        help_text="all: also the earlier versions of edited rankings (latest false).",
    )
    provenance = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=200,
        help_text="Only tasks settled so: unanimous, majority, adjudicated, unresolved "
        "(comma-separated; default all).",
    )

    def validate_provenance(self, value: str) -> list[str]:
        return _provenances(value)


class BootstrapSerializer(serializers.Serializer):
    resamples = serializers.IntegerField()
    seed = serializers.IntegerField()
    confidence = serializers.FloatField()


class FigureSerializer(serializers.Serializer):
    """A statistic with its sample size and 95% bootstrap interval over tasks."""

    key = serializers.CharField()
    label = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    n = serializers.IntegerField()
    n_of = serializers.CharField(help_text="What n counts.")
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)


class PairwiseFigureSerializer(FigureSerializer):
    form = serializers.CharField(help_text="strict, three_way or tie_half")
    chance = serializers.FloatField(help_text="Agreement of random labellers in this form.")


class AlphaFigureSerializer(FigureSerializer):
    level = serializers.CharField(help_text="Level of measurement: ordinal or nominal.")


class CampaignAgreementSerializer(serializers.Serializer):
    campaign = serializers.IntegerField(source="campaign_id")
    fail_policy = serializers.CharField()
    bootstrap = BootstrapSerializer()
    rankings = serializers.IntegerField()
    tasks = serializers.IntegerField()
    labellers = serializers.IntegerField()
    tasks_with_overlap = serializers.IntegerField()
    pairwise_agreement = PairwiseFigureSerializer(source="pairwise", many=True)
    krippendorff_alpha = AlphaFigureSerializer(source="alpha", many=True)
    kendall_w = FigureSerializer()
    fleiss_kappa = FigureSerializer()
    strength_alpha = AlphaFigureSerializer(
        allow_null=True,
        help_text="Krippendorff's alpha (interval) on preference strength; null where the "
        "campaign asks none.",
    )


class TaskAgreementSerializer(serializers.Serializer):
    task = serializers.IntegerField(source="task_id")
    prompt = serializers.IntegerField(source="prompt_id", allow_null=True)
    rankings = serializers.IntegerField()
    pairwise_agreement = PairwiseFigureSerializer(source="pairwise", many=True)
    kendall_w = FigureSerializer()


class TaskAgreementPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    results = TaskAgreementSerializer(many=True)


class AgreementResponseSerializer(CampaignAgreementSerializer):
    per_task = TaskAgreementPageSerializer(
        required=False, help_text="Only with ?tasks=1: the per-task figures, one page."
    )


class LabellerRowSerializer(serializers.Serializer):
    labeller = serializers.IntegerField(source="labeller_id")
    username = serializers.CharField()
    agreement = PairwiseFigureSerializer()
    tasks = serializers.IntegerField()
    tasks_with_overlap = serializers.IntegerField()
    fail_rate = serializers.FloatField(allow_null=True)
    tie_rate = serializers.FloatField(allow_null=True)
    median_seconds = serializers.FloatField(allow_null=True)
    robust_z = serializers.FloatField(allow_null=True)
    flagged = serializers.BooleanField()
    flag_reason = serializers.CharField(allow_null=True)
    gold_agreement = PairwiseFigureSerializer(
        allow_null=True, help_text="Agreement with the gold reference rankings (strict pairs)."
    )
    gold_tasks = serializers.IntegerField()
    gold_flagged = serializers.BooleanField()
    competence = serializers.FloatField(
        allow_null=True,
        help_text="Dawid-Skene competence on pair preferences: the fitted probability that "
        "their answer on a completion pair is the true one.",
    )
    competence_answers = serializers.IntegerField(
        help_text="Pair answers on units someone else answered too (what competence rests on)."
    )


class FlagRuleSerializer(serializers.Serializer):
    z_threshold = serializers.FloatField()
    min_scale = serializers.FloatField()
    min_tasks = serializers.IntegerField()
    min_labellers = serializers.IntegerField()
    time_fraction = serializers.FloatField(
        help_text="Flagged when the median time per task is below this share of the others'."
    )
    min_timed_tasks = serializers.IntegerField()


class LabellerTableSerializer(serializers.Serializer):
    campaign = serializers.IntegerField()
    fail_policy = serializers.CharField()
    bootstrap = BootstrapSerializer()
    flag_rule = FlagRuleSerializer()
    labellers = LabellerRowSerializer(many=True)


# --- Gold tasks and task order ------------------------------------------------------------------


class GoldReferenceInputSerializer(InputSerializer):
    """A gold task's reference ranking, shaped like a submitted ranking."""

    items = RankingItemInputSerializer(many=True, allow_empty=False, max_length=MAX_COMPLETIONS)


class GoldTaskSerializer(serializers.Serializer):
    task = serializers.IntegerField(source="pk")
    is_gold = serializers.BooleanField()
    reference = serializers.SerializerMethodField()

    @extend_schema_field(RankingItemInputSerializer(many=True, allow_null=True))
    def get_reference(self, task) -> list[dict] | None:
        if not task.gold_ranking:
            return None
        return [
            {"completion": int(completion), "rank": label}
            for completion, label in task.gold_ranking.items()
        ]


class GoldQuerySerializer(QuerySerializer):
    fail_policy = serializers.ChoiceField(choices=FAIL_POLICIES, default="rank_last")
    resamples = serializers.IntegerField(min_value=0, max_value=10_000, default=1000)
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, default=0)
    drift = serializers.ChoiceField(
        choices=["block", "week"],
        default="block",
        help_text="The drift series: per block of gold tasks (in the order ranked) or per week.",
    )
    block = serializers.IntegerField(
        min_value=2, max_value=1000, default=10, help_text="Gold tasks per block."
    )


class GoldRuleSerializer(serializers.Serializer):
    threshold = serializers.FloatField()
    block = serializers.IntegerField()
    min_tasks = serializers.IntegerField()


class GoldPointSerializer(serializers.Serializer):
    label = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    tasks = serializers.IntegerField()
    agreement = PairwiseFigureSerializer()


class GoldRowSerializer(serializers.Serializer):
    labeller = serializers.IntegerField(source="labeller_id")
    username = serializers.CharField()
    agreement = PairwiseFigureSerializer()
    tasks = serializers.IntegerField()
    latest = PairwiseFigureSerializer(help_text="Over the latest `block` gold tasks.")
    drift = GoldPointSerializer(many=True)
    onboarding = serializers.CharField(help_text="off, in_progress, passed or failed")
    onboarding_agreement = serializers.FloatField(allow_null=True)
    flagged = serializers.BooleanField()
    flag_reason = serializers.CharField(allow_null=True)


class GoldTableSerializer(serializers.Serializer):
    campaign = serializers.IntegerField(source="campaign_id")
    gold_tasks = serializers.IntegerField()
    rankings = serializers.IntegerField()
    fail_policy = serializers.CharField()
    bootstrap = BootstrapSerializer()
    rule = GoldRuleSerializer()
    drift_by = serializers.CharField()
    labellers = GoldRowSerializer(source="rows", many=True)


# --- Review, adjudication, edits and feedback ---------------------------------------------------


def _provenances(value: str) -> list[str]:
    from annotation.exports import PROVENANCES

    wanted = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(PROVENANCES))
    if unknown:
        raise serializers.ValidationError(
            f"unknown provenance {', '.join(unknown)}: use {', '.join(PROVENANCES)} "
            "(comma-separated)"
        )
    return wanted


class ReviewQuerySerializer(QuerySerializer):
    status = serializers.ChoiceField(
        choices=["pending", "reviewed", "all"],
        default="pending",
        help_text="pending: not adjudicated yet; reviewed: adjudicated.",
    )
    below = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        help_text="Only tasks whose strict pairwise agreement is below this.",
    )
    labeller = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_ID, help_text="Only tasks this user ranked."
    )
    flagged = serializers.BooleanField(
        default=False, help_text="Only tasks ranked by a labeller the quality table flags."
    )
    gold_failures = serializers.BooleanField(
        default=False,
        help_text="Only tasks ranked by a labeller whose recent gold agreement is flagged.",
    )
    page = serializers.IntegerField(min_value=1, default=1)
    page_size = serializers.IntegerField(min_value=1, max_value=1000, default=100)


class QueueEntrySerializer(serializers.Serializer):
    task = serializers.IntegerField(source="task_id")
    prompt_id = serializers.IntegerField()
    prompt = serializers.CharField(help_text="The prompt's first 160 characters.")
    rankings = serializers.IntegerField()
    labellers = serializers.ListField(child=serializers.CharField())
    agreement = serializers.FloatField(
        allow_null=True, help_text="Strict pairwise agreement of the task's labellers."
    )
    pairs = serializers.IntegerField(help_text="Labeller pairs x completion pairs compared.")
    three_way = serializers.FloatField(allow_null=True)
    provenance = serializers.CharField()
    decision = serializers.CharField(allow_null=True)
    reviewer = serializers.CharField(allow_null=True)
    flagged = serializers.ListField(child=serializers.CharField())
    gold_flagged = serializers.ListField(child=serializers.CharField())


class ReviewQueueSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    complete = serializers.IntegerField(help_text="Real tasks that reached their overlap.")
    reviewed = serializers.IntegerField()
    own = serializers.IntegerField(
        help_text="Matching tasks you ranked yourself: left to another reviewer."
    )
    results = QueueEntrySerializer(many=True)


def _labels_out(labels: Mapping[int, Any]) -> list[dict]:
    return [{"completion": c, "rank": label} for c, label in labels.items()]


class ReviewCompletionSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="completion_id")
    letter = serializers.CharField()
    position = serializers.IntegerField()
    text = serializers.CharField()
    source = serializers.CharField()


class ReviewRankingSerializer(serializers.Serializer):
    ranking = serializers.IntegerField(source="ranking_id")
    labeller = serializers.IntegerField(source="labeller_id")
    username = serializers.CharField()
    version = serializers.IntegerField()
    seconds = serializers.FloatField()
    comment = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    edited_at = serializers.DateTimeField(allow_null=True)
    items = serializers.SerializerMethodField()

    @extend_schema_field(RankingItemInputSerializer(many=True))
    def get_items(self, view) -> list[dict]:
        return _labels_out(view.labels)


class AdjudicationViewSerializer(serializers.Serializer):
    decision = serializers.CharField()
    reviewer = serializers.CharField()
    note = serializers.CharField(allow_blank=True)
    source_ranking = serializers.IntegerField(allow_null=True)
    updated_at = serializers.DateTimeField()
    items = serializers.SerializerMethodField()

    @extend_schema_field(RankingItemInputSerializer(many=True))
    def get_items(self, view) -> list[dict]:
        return _labels_out(view.labels)


class TaskReviewSerializer(serializers.Serializer):
    task = serializers.IntegerField(source="task_id")
    campaign = serializers.IntegerField(source="campaign_id")
    prompt = serializers.CharField()
    messages = serializers.ListField(child=serializers.DictField(), allow_null=True)
    complete = serializers.BooleanField(help_text="Reached its overlap: it can be adjudicated.")
    ranked_by_you = serializers.BooleanField(
        help_text="You ranked it: another reviewer adjudicates it."
    )
    completions = ReviewCompletionSerializer(many=True)
    rankings = ReviewRankingSerializer(many=True)
    consensus = serializers.SerializerMethodField()
    agreement = serializers.FloatField(allow_null=True)
    pairs = serializers.IntegerField()
    provenance = serializers.CharField()
    adjudication = AdjudicationViewSerializer(allow_null=True)

    @extend_schema_field(RankingItemInputSerializer(many=True))
    def get_consensus(self, review) -> list[dict]:
        return _labels_out(review.consensus)


class AdjudicateSerializer(InputSerializer):
    decision = serializers.ChoiceField(
        choices=["consensus", "labeller", "written"],
        help_text="consensus: accept the ranked-pairs consensus; labeller: pick `ranking`; "
        "written: your own `items`, with a `note`.",
    )
    ranking = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_ID, help_text="decision labeller: its id."
    )
    items = RankingItemInputSerializer(
        many=True, required=False, allow_empty=False, max_length=MAX_COMPLETIONS
    )
    note = serializers.CharField(
        required=False, allow_blank=True, max_length=5000, default="", trim_whitespace=True
    )


class RankingEditSerializer(RankingInputSerializer):
    version = serializers.IntegerField(
        min_value=1, max_value=32767, help_text="The version you edited (the ranking's `version`)."
    )


class FeedbackCompletionSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="completion_id")
    letter = serializers.CharField()
    text = serializers.CharField()
    yours = LabelField(allow_null=True)
    adjudicated = LabelField(allow_null=True)


class FeedbackSerializer(serializers.Serializer):
    ranking = serializers.IntegerField(source="ranking_id")
    assignment = serializers.IntegerField(source="assignment_id")
    campaign = serializers.IntegerField(source="campaign_id")
    prompt = serializers.CharField()
    completions = FeedbackCompletionSerializer(many=True)
    differs = serializers.BooleanField()
    pairs_differing = serializers.ListField(
        child=serializers.ListField(child=serializers.CharField(), min_length=2, max_length=2),
        help_text="Letter pairs the adjudication orders differently from you.",
    )
    pairs = serializers.IntegerField()
    decision = serializers.CharField()
    note = serializers.CharField(allow_blank=True)
    reviewed_at = serializers.DateTimeField()


# --- Cohen's kappa per labeller pair -----------------------------------------------------------


class KappaQuerySerializer(QuerySerializer):
    fail_policy = serializers.ChoiceField(
        choices=FAIL_POLICIES,
        default="drop",
        help_text="F items: left out (drop, as the pair export) or a bottom tier (rank_last).",
    )
    resamples = serializers.IntegerField(min_value=0, max_value=10_000, default=1000)
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, default=0)


class KappaCellSerializer(serializers.Serializer):
    labeller_a = serializers.IntegerField()
    username_a = serializers.CharField()
    labeller_b = serializers.IntegerField()
    username_b = serializers.CharField()
    kappa = FigureSerializer()
    tasks = serializers.IntegerField(help_text="Tasks both ranked.")


class KappaLabellerSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class KappaMatrixSerializer(serializers.Serializer):
    campaign = serializers.IntegerField(source="campaign_id")
    fail_policy = serializers.CharField()
    bootstrap = BootstrapSerializer()
    labellers = serializers.SerializerMethodField()
    pairs = KappaCellSerializer(many=True)
    matrix = serializers.SerializerMethodField()

    @extend_schema_field(KappaLabellerSerializer(many=True))
    def get_labellers(self, table) -> list[dict]:
        return [{"id": pk, "username": name} for pk, name in table.labellers]

    @extend_schema_field(
        {
            "type": "array",
            "items": {"type": "array", "items": {"type": ["number", "null"]}},
            "description": "kappa[i][j] for labellers i, j in `labellers` order (null: no "
            "task in common, undefined, or i = j)",
        }
    )
    def get_matrix(self, table) -> list[list[float | None]]:
        index = {pk: i for i, (pk, _) in enumerate(table.labellers)}
        size = len(index)
        matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
        for cell in table.pairs:
            i, j = index[cell.labeller_a], index[cell.labeller_b]
            matrix[i][j] = matrix[j][i] = cell.kappa.value
        return matrix
