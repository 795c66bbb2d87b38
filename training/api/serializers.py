from __future__ import annotations

from rest_framework import serializers

from annotation.api.serializers import MAX_ID, ObjectIdField
from annotation.models import Campaign
from training.models import JobMetric, ModelVersion, TrainingJob


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

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "kind",
            "status",
            "params",
            "campaign",
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


class TrainingJobCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=TrainingJob.Kind.choices)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    campaign_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        allow_empty=False,
        max_length=100,
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
        found = set(Campaign.objects.filter(pk__in=ids).values_list("pk", flat=True))
        missing = sorted(set(ids) - found)
        if missing:
            raise serializers.ValidationError(f"unknown campaign(s): {missing}")
        return sorted(set(ids))
