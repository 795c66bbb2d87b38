"""Input serializers check shapes; output serializers shape responses. Rules live in services."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotation.models import (
    MAX_COMPLETIONS,
    MIN_COMPLETIONS,
    Assignment,
    Campaign,
    Completion,
    Guideline,
    Ranking,
)
from annotation.pairs import FAIL

# --- Campaigns ----------------------------------------------------------------------------------


class CampaignSerializer(serializers.ModelSerializer):
    guideline_version = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = Campaign
        fields = [
            "id",
            "name",
            "description",
            "status",
            "completions_per_task",
            "overlap",
            "allow_ties",
            "allow_fail",
            "round_number",
            "guideline_version",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class CampaignCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    completions_per_task = serializers.IntegerField(
        min_value=MIN_COMPLETIONS, max_value=MAX_COMPLETIONS, default=4
    )
    overlap = serializers.IntegerField(min_value=1, max_value=100, default=3)
    allow_ties = serializers.BooleanField(default=True)
    allow_fail = serializers.BooleanField(default=True)
    round_number = serializers.IntegerField(min_value=0, default=0)


class CampaignUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    completions_per_task = serializers.IntegerField(
        min_value=MIN_COMPLETIONS, max_value=MAX_COMPLETIONS, required=False
    )
    overlap = serializers.IntegerField(min_value=1, max_value=100, required=False)
    allow_ties = serializers.BooleanField(required=False)
    allow_fail = serializers.BooleanField(required=False)


class CampaignStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Campaign.Status.choices)


class MembersSerializer(serializers.Serializer):
    usernames = serializers.ListField(
        child=serializers.CharField(max_length=150), allow_empty=False, max_length=1000
    )

    def validate_usernames(self, usernames: list[str]) -> list:
        users = list(get_user_model().objects.filter(username__in=usernames))
        missing = sorted(set(usernames) - {u.username for u in users})
        if missing:
            raise serializers.ValidationError(f"unknown user(s): {', '.join(missing)}")
        return users


class ImportSerializer(serializers.Serializer):
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=["jsonl", "csv"], required=False)


class ImportResultSerializer(serializers.Serializer):
    prompts = serializers.IntegerField()
    tasks = serializers.IntegerField()
    completions = serializers.IntegerField()


# --- Guidelines ---------------------------------------------------------------------------------


class GuidelineSerializer(serializers.ModelSerializer):
    class Meta:
        model = Guideline
        fields = ["id", "version", "text", "created_at"]
        read_only_fields = fields


class GuidelinePublishSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=200_000, trim_whitespace=False)


class AcknowledgeSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)


# --- Assignments and rankings -------------------------------------------------------------------


class LabellerCompletionSerializer(serializers.ModelSerializer):
    """What a labeller sees of a completion: the text only, never its source or metadata."""

    class Meta:
        model = Completion
        fields = ["id", "text"]
        read_only_fields = fields


class AssignmentSerializer(serializers.ModelSerializer):
    task = serializers.IntegerField(source="task_id", read_only=True)
    campaign = serializers.IntegerField(source="campaign_id", read_only=True)
    prompt = serializers.SerializerMethodField()
    completions = serializers.SerializerMethodField()
    allow_ties = serializers.BooleanField(source="campaign.allow_ties", read_only=True)
    allow_fail = serializers.BooleanField(source="campaign.allow_fail", read_only=True)

    class Meta:
        model = Assignment
        fields = [
            "id",
            "campaign",
            "task",
            "status",
            "assigned_at",
            "lease_expires_at",
            "finished_at",
            "skip_reason",
            "allow_ties",
            "allow_fail",
            "prompt",
            "completions",
        ]
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "messages": {"type": "array", "items": {"type": "object"}, "nullable": True},
            },
        }
    )
    def get_prompt(self, assignment: Assignment) -> dict:
        prompt = assignment.task.prompt
        return {"text": prompt.text, "messages": prompt.messages}

    @extend_schema_field(LabellerCompletionSerializer(many=True))
    def get_completions(self, assignment: Assignment) -> list[dict]:
        completions = self.context.get("completions")
        if completions is None:
            from annotation.selectors import assignment_completions

            completions = assignment_completions(assignment=assignment)
        return LabellerCompletionSerializer(completions, many=True).data


class AssignmentSummarySerializer(serializers.ModelSerializer):
    task = serializers.IntegerField(source="task_id", read_only=True)
    campaign = serializers.IntegerField(source="campaign_id", read_only=True)

    class Meta:
        model = Assignment
        fields = [
            "id",
            "campaign",
            "task",
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


class RankingItemInputSerializer(serializers.Serializer):
    completion = serializers.IntegerField()
    rank = LabelField()


class RankingInputSerializer(serializers.Serializer):
    items = RankingItemInputSerializer(many=True, allow_empty=False)
    time_spent_ms = serializers.IntegerField(min_value=0)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")


class RankingItemSerializer(serializers.Serializer):
    completion = serializers.IntegerField(source="completion_id")
    rank = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.ANY)
    def get_rank(self, item) -> int | str:
        return item.label


class RankingSerializer(serializers.ModelSerializer):
    assignment = serializers.IntegerField(source="assignment_id", read_only=True)
    task = serializers.IntegerField(source="task_id", read_only=True)
    campaign = serializers.IntegerField(source="campaign_id", read_only=True)
    labeller = serializers.IntegerField(source="labeller_id", read_only=True)
    guideline_version = serializers.IntegerField(
        source="guideline.version", read_only=True, allow_null=True, default=None
    )
    items = RankingItemSerializer(many=True, read_only=True)

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
            "items",
        ]
        read_only_fields = fields


class SkipSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)


# --- Progress -----------------------------------------------------------------------------------


class CampaignProgressSerializer(serializers.Serializer):
    tasks = serializers.IntegerField()
    tasks_complete = serializers.IntegerField()
    tasks_in_progress = serializers.IntegerField()
    rankings = serializers.IntegerField()
    target_rankings = serializers.IntegerField()
    open_leases = serializers.IntegerField()


class LabellerProgressSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    submitted = serializers.IntegerField()
    skipped = serializers.IntegerField()
    open = serializers.IntegerField()
    remaining = serializers.IntegerField()
    submitted_today = serializers.IntegerField()
