from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotation.api.serializers import MAX_ID, ObjectIdField
from annotation.models import Campaign
from training.models import JobMetric, ModelVersion, Round, TrainingJob


class ModelVersionSerializer(serializers.ModelSerializer):
    parent = serializers.IntegerField(source="parent_id", read_only=True, allow_null=True)
    created_by_job = serializers.IntegerField(
        source="created_by_job_id", read_only=True, allow_null=True
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "kind",
            "name",
            "path",
            "base",
            "parent",
            "created_by_job",
            "metrics",
            "reward_offset",
            "reward_scale",
            "created_at",
        ]
        read_only_fields = fields


class ModelVersionRegisterSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ModelVersion.Kind.choices)
    name = serializers.CharField(max_length=200)
    path = serializers.CharField(
        max_length=1000, help_text="A local model directory or a Hugging Face model id."
    )


class TrainingJobSerializer(serializers.ModelSerializer):
    campaign = serializers.IntegerField(source="campaign_id", read_only=True, allow_null=True)
    base_model = serializers.IntegerField(source="base_model_id", read_only=True, allow_null=True)
    result_version = serializers.IntegerField(
        source="result_version_id", read_only=True, allow_null=True
    )
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    round = serializers.IntegerField(source="round_id", read_only=True, allow_null=True)
    parent = serializers.IntegerField(source="parent_id", read_only=True, allow_null=True)

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "kind",
            "status",
            "params",
            "campaign",
            "round",
            "parent",
            "base_model",
            "result_version",
            "progress_step",
            "progress_total",
            "summary",
            "log_tail",
            "error",
            "attempts",
            "cancel_requested",
            "worker",
            "device",
            "created_by",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
        ]
        read_only_fields = fields


class JobMetricSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobMetric
        fields = ["step", "values", "created_at"]
        read_only_fields = fields


class ModelVersionQuerySerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=ModelVersion.Kind.choices, required=False, help_text="Only versions of this kind."
    )


class MetricsQuerySerializer(serializers.Serializer):
    after = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="Only steps after this one (for polling).",
    )


class TrainingJobCreateSerializer(serializers.Serializer):
    """What a job is asked for; which fields a kind uses, and their defaults, are described in
    ``training.services.training_job_create_from_form``."""

    kind = serializers.ChoiceField(choices=TrainingJob.Kind.choices)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    campaign_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        allow_empty=False,
        max_length=100,
        required=False,
        help_text="Rankings (reward model, DPO) or prompts (PPO, generate) to use; with a "
        "round, the round's by default.",
    )
    round = ObjectIdField(
        queryset=Round.objects.select_related("campaign"),
        required=False,
        allow_null=True,
        help_text="The RLHF round the job works for; its campaign and models are the defaults.",
    )
    reward_model_version = ObjectIdField(
        queryset=ModelVersion.objects.filter(kind="reward"),
        required=False,
        allow_null=True,
        help_text="PPO: the reward model (default: the round's, else the newest).",
    )
    target_campaign = ObjectIdField(
        queryset=Campaign.objects.all(),
        required=False,
        allow_null=True,
        help_text="generate without a round: the campaign that gets the tasks.",
    )
    num_completions = serializers.IntegerField(
        min_value=2, max_value=9, required=False, allow_null=True, help_text="generate: K (= N)."
    )
    mix = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=9),
        required=False,
        allow_null=True,
        help_text='generate: {"policy": 2, "previous": 1, "reference": 1}, adding up to K.',
    )
    update = serializers.ChoiceField(
        choices=["ppo", "dpo"], default="ppo", help_text="round: the policy update."
    )
    evaluation = serializers.DictField(
        required=False,
        allow_null=True,
        help_text="PPO/DPO without a round: evaluation settings (see EvalSettings).",
    )
    base_model_version = ObjectIdField(
        queryset=ModelVersion.objects.all(), required=False, allow_null=True
    )
    base_model_path = serializers.CharField(max_length=1000, required=False, allow_blank=True)
    reference_model_version = ObjectIdField(
        queryset=ModelVersion.objects.filter(kind__in=["base", "policy"]),
        required=False,
        allow_null=True,
    )
    ties = serializers.BooleanField(default=False)
    fail_policy = serializers.ChoiceField(choices=["drop", "rank_last"], default="drop")
    config = serializers.DictField(required=False, default=dict)

    def validate_campaign_ids(self, ids: list[int]) -> list[int]:
        return _existing_campaigns(ids)


def _existing_campaigns(ids: list[int]) -> list[int]:
    found = set(Campaign.objects.filter(pk__in=ids).values_list("pk", flat=True))
    missing = sorted(set(ids) - found)
    if missing:
        raise serializers.ValidationError(f"unknown campaign(s): {missing}")
    return sorted(set(ids))


# --- Rounds -------------------------------------------------------------------------------------


class RoundJobSerializer(serializers.ModelSerializer):
    parent = serializers.IntegerField(source="parent_id", read_only=True, allow_null=True)

    class Meta:
        model = TrainingJob
        fields = ["id", "kind", "status", "parent", "progress_step", "progress_total", "created_at"]
        read_only_fields = fields


class RoundSerializer(serializers.ModelSerializer):
    campaign = serializers.IntegerField(source="campaign_id", read_only=True)
    campaign_name = serializers.CharField(source="campaign.name", read_only=True)
    previous = serializers.IntegerField(source="previous_id", read_only=True, allow_null=True)
    next_round = serializers.SerializerMethodField()
    next_campaign = serializers.IntegerField(
        source="next_campaign_id", read_only=True, allow_null=True
    )
    reference = serializers.IntegerField(source="reference_id", read_only=True)
    policy_before = serializers.IntegerField(source="policy_before_id", read_only=True)
    reward_model = serializers.IntegerField(
        source="reward_model_id", read_only=True, allow_null=True
    )
    policy_after = serializers.IntegerField(
        source="policy_after_id", read_only=True, allow_null=True
    )
    jobs = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)

    class Meta:
        model = Round
        fields = [
            "id",
            "number",
            "status",
            "campaign",
            "campaign_name",
            "previous",
            "next_round",
            "next_campaign",
            "reward_scope",
            "reference",
            "policy_before",
            "reward_model",
            "policy_after",
            "evaluation",
            "eval_settings",
            "jobs",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_next_round(self, rnd: Round) -> int | None:
        following = Round.objects.filter(previous=rnd).values_list("pk", flat=True).first()
        return following

    @extend_schema_field(RoundJobSerializer(many=True))
    def get_jobs(self, rnd: Round) -> list[dict]:
        """The round's jobs, oldest first; a chained job's steps name it as their parent."""
        jobs = TrainingJob.objects.filter(round=rnd).order_by("created_at", "id")
        return RoundJobSerializer(jobs, many=True).data


class RoundCreateSerializer(serializers.Serializer):
    campaign = ObjectIdField(queryset=Campaign.objects.all())
    policy = ObjectIdField(
        queryset=ModelVersion.objects.exclude(kind="reward"),
        help_text="The policy that generated the campaign's completions (or the loop's start).",
    )
    reference = ObjectIdField(
        queryset=ModelVersion.objects.exclude(kind="reward"),
        required=False,
        allow_null=True,
        help_text="The KL reference of every round (default: the policy).",
    )
    reward_scope = serializers.ChoiceField(choices=Round.RewardScope.choices, default="all")
    eval_settings = serializers.DictField(required=False, default=dict)


class RoundNextSerializer(serializers.Serializer):
    """Start the next round: a generate job for the round (fields as for training jobs)."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    campaign_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        allow_empty=False,
        max_length=100,
        required=False,
        help_text="Prompts to generate for (default: the round's campaign's).",
    )
    num_completions = serializers.IntegerField(
        min_value=2, max_value=9, required=False, allow_null=True
    )
    mix = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=9), required=False, allow_null=True
    )
    config = serializers.DictField(required=False, default=dict, help_text="SamplingConfig.")

    def validate_campaign_ids(self, ids: list[int]) -> list[int]:
        return _existing_campaigns(ids)


class RoundRunSerializer(serializers.Serializer):
    """Run the whole round as one chained job: reward model → update → generate."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    update = serializers.ChoiceField(choices=["ppo", "dpo"], default="ppo")
    config = serializers.DictField(
        required=False,
        default=dict,
        help_text="Sections reward_model, ppo, dpo, sampling (each its config class).",
    )
    num_completions = serializers.IntegerField(
        min_value=2, max_value=9, required=False, allow_null=True
    )
    mix = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=9), required=False, allow_null=True
    )
    ties = serializers.BooleanField(default=False)
    fail_policy = serializers.ChoiceField(choices=["drop", "rank_last"], default="drop")
