from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from annotation.api.serializers import MAX_ID, InputSerializer, ObjectIdField, QuerySerializer
from annotation.models import Campaign
from training.jobs import KINDS
from training.jobs.base import JobKind
from training.jobs.round import RoundConfig
from training.ml.config import field_docs
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


class ModelVersionRegisterSerializer(InputSerializer):
    kind = serializers.ChoiceField(choices=ModelVersion.Kind.choices)
    name = serializers.CharField(max_length=200)
    path = serializers.CharField(
        max_length=1000, help_text="A local model directory or a Hugging Face model id."
    )
    team = serializers.IntegerField(
        min_value=1,
        max_value=2**62,
        required=False,
        help_text="The team the model belongs to (one where you train); without it, the one "
        "team you train in, or every team for those allowed to train everywhere.",
    )


class RoundJobSerializer(serializers.ModelSerializer):
    parent = serializers.IntegerField(source="parent_id", read_only=True, allow_null=True)

    class Meta:
        model = TrainingJob
        fields = ["id", "kind", "status", "parent", "progress_step", "progress_total", "created_at"]
        read_only_fields = fields


class TrainingJobSerializer(serializers.ModelSerializer):
    campaign = serializers.IntegerField(source="campaign_id", read_only=True, allow_null=True)
    base_model = serializers.IntegerField(source="base_model_id", read_only=True, allow_null=True)
    result_version = serializers.IntegerField(
        source="result_version_id", read_only=True, allow_null=True
    )
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    round = serializers.IntegerField(source="round_id", read_only=True, allow_null=True)
    parent = serializers.IntegerField(source="parent_id", read_only=True, allow_null=True)
    waiting_for_queue = serializers.BooleanField(
        read_only=True, help_text="Queued, but the broker has not taken it yet (unreachable)."
    )
    steps = serializers.SerializerMethodField(
        help_text="A whole-round job's steps (reward model, update, generate), oldest first."
    )
    preflight = serializers.SerializerMethodField(
        help_text="The memory plan checked when the job was created: GB per GPU by part, the "
        "peak, the GPUs, whether it fits ({} for kinds that are not estimated)."
    )

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "kind",
            "status",
            "waiting_for_queue",
            "enqueue_error",
            "steps",
            "preflight",
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

    @extend_schema_field(RoundJobSerializer(many=True))
    def get_steps(self, job: TrainingJob) -> list[dict]:
        if job.kind != TrainingJob.Kind.ROUND:
            return []
        return RoundJobSerializer(job.steps.order_by("created_at", "id"), many=True).data

    @extend_schema_field(serializers.DictField())
    def get_preflight(self, job: TrainingJob) -> dict:
        return (job.params or {}).get("preflight") or {}


class JobMetricSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobMetric
        fields = ["step", "values", "created_at"]
        read_only_fields = fields


class ModelVersionQuerySerializer(QuerySerializer):
    kind = serializers.ChoiceField(
        choices=ModelVersion.Kind.choices, required=False, help_text="Only versions of this kind."
    )


class MetricsQuerySerializer(QuerySerializer):
    after = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="Only steps after this one (for polling).",
    )


# --- Creating jobs: one serializer per kind, derived from its Request and config classes -------


def _api_field(name: str, hint: Any, default: Any, doc: str) -> serializers.Field:
    """The API field of one Request field (model references by id)."""
    common: dict[str, Any] = {"required": False, "help_text": doc or None}
    optional = _optional(hint)
    base = _strip_none(hint)
    if name == "round":
        return ObjectIdField(
            queryset=Round.objects.select_related("campaign"), allow_null=True, **common
        )
    if name == "campaign_ids":
        return serializers.ListField(
            child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
            allow_empty=False,
            max_length=100,
            **common,
        )
    if name in ("target_campaign", "campaign"):
        return ObjectIdField(queryset=Campaign.objects.all(), allow_null=True, **common)
    if name == "reward_model_version":
        return ObjectIdField(
            queryset=ModelVersion.objects.filter(kind="reward"), allow_null=True, **common
        )
    if name == "reference_model_version":
        return ObjectIdField(
            queryset=ModelVersion.objects.filter(kind__in=["base", "policy"]),
            allow_null=True,
            **common,
        )
    if base is ModelVersion:
        return ObjectIdField(queryset=ModelVersion.objects.all(), allow_null=True, **common)
    if name == "mix":
        return serializers.DictField(
            child=serializers.IntegerField(min_value=0, max_value=9), allow_null=True, **common
        )
    if name == "num_completions":
        return serializers.IntegerField(min_value=2, max_value=9, allow_null=True, **common)
    if name == "name":
        return serializers.CharField(max_length=200, allow_blank=True, **common)
    if name == "base_model_path":
        return serializers.CharField(max_length=1000, allow_blank=True, **common)
    return _value_field(base, default, optional, common)


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


def _strip_none(hint: Any) -> Any:
    if _optional(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
    return hint


def _value_field(hint: Any, default: Any, optional: bool, common: dict) -> serializers.Field:
    """A plain value's field: bool, int, float, str, a Literal's choices, lists and objects."""
    if default is not dataclasses.MISSING and not callable(default):
        common = {**common, "default": default}
        common.pop("required")
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return serializers.ChoiceField(
            choices=list(typing.get_args(hint)), allow_null=optional, **common
        )
    if hint is bool:
        return serializers.BooleanField(**common)
    if hint is int:
        return serializers.IntegerField(allow_null=optional, **common)
    if hint is float:
        return serializers.FloatField(allow_null=optional, **common)
    if hint is str:
        return serializers.CharField(allow_blank=True, allow_null=optional, **common)
    if origin in (tuple, list):
        return serializers.ListField(allow_null=optional, **common)
    if origin is dict or hint is dict:
        return serializers.DictField(allow_null=optional, **common)
    return serializers.JSONField(allow_null=optional, **common)


class _StrictSerializer(InputSerializer):
    """A job kind's fields: another kind's (or a typo) must not pass as a default."""

    unknown_field_message = "unknown field for this kind"


@functools.cache
def config_serializer(cls: type) -> type[serializers.Serializer]:
    """Overrides of a ``training.ml`` config dataclass: every field optional, documented with
    its docstring; a nested config dataclass (a round's sections) nests."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            fields[f.name] = config_serializer(hint)(required=False, help_text=docs.get(f.name))
            continue
        common = {"required": False, "help_text": docs.get(f.name) or None}
        field = _value_field(_strip_none(hint), dataclasses.MISSING, _optional(hint), common)
        if f.default is not dataclasses.MISSING and not isinstance(f.default, list | dict):
            field.help_text = f"{field.help_text or ''} (default: {f.default!r})".strip()
        fields[f.name] = field
    return type(f"{cls.__name__}Serializer", (_ConfigSerializer,), fields)


class _ConfigSerializer(_StrictSerializer):
    def to_internal_value(self, data: Any) -> Any:
        # Only what was given: the kind's build fills in the rest from the class's defaults.
        values = super().to_internal_value(data)
        return {k: v for k, v in values.items() if k in data}


class _RoundConfigSerializer(serializers.Field):
    """A round job's config: sections reward_model, ppo, dpo, sampling; a flat object is the
    update's section."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sections = config_serializer(RoundConfig)()

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError("must be an object of hyper-parameters")
        if data and not set(data) & set(self.sections.fields):
            update = (getattr(self.parent, "initial_data", None) or {}).get("update") or "ppo"
            data = {update: data}
        return self.sections.run_validation(data)

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(config_serializer(RoundConfig))
class RoundConfigField(_RoundConfigSerializer):
    pass


def _config_field(kind: JobKind) -> serializers.Field:
    help_text = "Hyper-parameters: overrides of the defaults."
    if kind.kind == TrainingJob.Kind.ROUND:
        return RoundConfigField(required=False, default=dict, help_text=help_text)
    classes = {section.cls for section in kind.sections}
    if len(classes) != 1:
        return serializers.DictField(required=False, default=dict, help_text=help_text)
    return config_serializer(classes.pop())(required=False, default=dict, help_text=help_text)


@functools.cache
def job_create_serializer(
    kind_name: str, *, without: frozenset[str] = frozenset()
) -> type[serializers.Serializer]:
    """The request body of one job kind, from its ``Request`` dataclass: the fields, their
    help texts (the field docstrings) and defaults; ``config`` from its config classes.
    ``without``: fields the endpoint fills in itself (a round's ``next`` and ``run``)."""
    kind = KINDS[kind_name]
    hints = typing.get_type_hints(kind.Request)
    docs = field_docs(kind.Request)
    fields: dict[str, Any] = {}
    if "kind" not in without:
        # str(): a TextChoices member is not plain JSON (the schema renderer refuses it).
        fields["kind"] = serializers.ChoiceField(choices=[str(kind_name)], help_text=kind.title)
    for f in kind.request_fields():
        if f.name in without:
            continue
        if f.name == "config":
            fields["config"] = _config_field(kind)
            continue
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        fields[f.name] = _api_field(f.name, hints[f.name], default, docs.get(f.name, ""))
    if "campaign_ids" in fields:
        fields["validate_campaign_ids"] = lambda self, ids: _existing_campaigns(ids)
    name = "".join(part.title() for part in kind_name.split("_"))
    suffix = "JobCreate" if not without else "JobFields"
    return type(f"{name}{suffix}Serializer", (_StrictSerializer,), fields)


class AcquisitionInputSerializer(InputSerializer):
    reward_model_version = serializers.IntegerField(
        min_value=1,
        max_value=MAX_ID,
        required=False,
        help_text="The reward model that scores the tasks (default: the newest one).",
    )


class JobKindSerializer(serializers.Serializer):
    """Reads only ``kind`` out of a whole job body (the kind's serializer checks the rest)."""

    kind = serializers.ChoiceField(choices=TrainingJob.Kind.choices)


def job_create_schema() -> PolymorphicProxySerializer:
    """The create body in the OpenAPI schema: one object per kind, told apart by ``kind``."""
    return PolymorphicProxySerializer(
        component_name="TrainingJobCreate",
        serializers={
            str(name): job_create_serializer(name)
            for name, kind in KINDS.items()
            if kind.created_here
        },
        resource_type_field_name="kind",
    )


def _existing_campaigns(ids: list[int]) -> list[int]:
    found = set(Campaign.objects.filter(pk__in=ids).values_list("pk", flat=True))
    missing = sorted(set(ids) - found)
    if missing:
        raise serializers.ValidationError(f"unknown campaign(s): {missing}")
    return sorted(set(ids))


# --- Rounds -------------------------------------------------------------------------------------


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


class RoundCreateSerializer(InputSerializer):
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


ROUND_NEXT_SERIALIZER = job_create_serializer(
    TrainingJob.Kind.GENERATE,
    without=frozenset({"kind", "round", "target_campaign", "base_model_version",
                       "base_model_path", "reference_model_version"}),
)  # fmt: skip
"""Start the next round: a generate job for the round (fields as for generate jobs)."""

ROUND_RUN_SERIALIZER = job_create_serializer(
    TrainingJob.Kind.ROUND,
    without=frozenset({"kind", "round", "campaign_ids", "base_model_version",
                       "reference_model_version"}),
)  # fmt: skip
"""Run the whole round as one chained job: reward model → update → generate."""
