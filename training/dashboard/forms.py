"""The training job form: what to train on, which model to start from, and the main
hyper-parameters, each prefilled with its config dataclass's default and documented with the
docstring written under the field (one source of truth: ``training.ml``'s config classes).

Only the shape is checked here; the rules are the job kinds' (the API's too), whose
errors the view puts next to the field they name.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal

from django import forms

from annotation.errors import ServiceError
from annotation.exports import FAIL_POLICIES
from annotation.models import Campaign
from training.jobs import KINDS as JOB_KINDS
from training.jobs.base import ConfigSection, JobKind
from training.ml.config import field_docs
from training.ml.evaluation import EvalSettings
from training.models import ModelVersion, Round

CONFIG_PREFIX = "config__"
MIX = ("mix_policy", "mix_previous", "mix_reference")

KINDS: dict[str, JobKind] = {name: kind for name, kind in JOB_KINDS.items() if kind.created_here}
"""The kinds the job form creates (acquisition jobs have their own endpoint)."""


def config_class(section: ConfigSection) -> type:
    return section.cls


API_ONLY = frozenset({"evaluation"})
"""Request fields the form leaves out: a standalone update's evaluation settings keep their
defaults here (the API takes them; a round's job uses the round's)."""


def job_field_names(kind: JobKind) -> tuple[str, ...]:
    """The form's non-config fields of a kind, in its Request's order (``mix`` as three)."""
    names: list[str] = []
    for f in kind.request_fields():
        if f.name == "config" or f.name in API_ONLY:
            continue
        names.extend(MIX if f.name == "mix" else [f.name])
    return tuple(names)


def _form_field(field: dataclasses.Field, hint: Any, doc: str) -> forms.Field:
    default = field.default
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        hint = next(a for a in args if a is not type(None))
    common = {"label": field.name.replace("_", " "), "help_text": doc, "initial": default}
    if typing.get_origin(hint) is Literal:
        return forms.ChoiceField(choices=[(v, v) for v in typing.get_args(hint)], **common)
    if hint is bool:
        return forms.BooleanField(required=False, **common)
    if hint is int:
        return forms.IntegerField(required=not optional, **common)
    if hint is float:
        return forms.FloatField(required=not optional, **common)
    return forms.CharField(required=not optional, **common)


def section_prefix(section: ConfigSection) -> str:
    return CONFIG_PREFIX + (f"{section.key}__" if section.key else "")


def config_form_fields(section: ConfigSection) -> dict[str, forms.Field]:
    """Form fields for a section's hyper-parameters, prefilled with the class's defaults."""
    cls = section.cls
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    prefix = section_prefix(section)
    return {
        prefix + name: _form_field(by_name[name], hints[name], docs.get(name, ""))
        for name in section.fields
    }


# --- The form -----------------------------------------------------------------------------------


class ModelVersionChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelVersion) -> str:
        return f"#{obj.pk} {obj.name} ({obj.get_kind_display().lower()})"


class RoundChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Round) -> str:
        return f"Round {obj.number}: {obj.campaign.name} ({obj.get_status_display().lower()})"


class CampaignChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Campaign) -> str:
        return f"#{obj.pk} {obj.name} (N={obj.completions_per_task})"


def _all_fields() -> dict[str, forms.Field]:
    """Every non-config field a job form may show; each kind picks its own (KindSpec)."""
    versions = ModelVersion.objects.exclude(kind=ModelVersion.Kind.REWARD)
    return {
        "round": RoundChoice(
            queryset=Round.objects.exclude(status=Round.Status.COMPLETED).select_related(
                "campaign"
            ),
            required=False,
            empty_label="— no round —",
            help_text="Tie the job to an RLHF round: its campaign and models fill in whatever "
            "is left empty below.",
        ),
        "campaign_ids": forms.ModelMultipleChoiceField(
            queryset=Campaign.objects.order_by("-created_at", "-id"),
            required=False,
            label="Campaigns",
            help_text="Whose rankings (or prompts) the job uses.",
            widget=forms.SelectMultiple(attrs={"size": 4}),
        ),
        "target_campaign": CampaignChoice(
            queryset=Campaign.objects.exclude(status=Campaign.Status.CLOSED),
            required=False,
            empty_label="— the one campaign above —",
            help_text="Where the generated tasks go (without a round).",
        ),
        "name": forms.CharField(
            max_length=200, required=False, help_text="Name of the model version it registers."
        ),
        "base_model_version": ModelVersionChoice(
            queryset=versions,
            required=False,
            label="Start from a model version",
            empty_label="— the round's, the default base model, or the path below —",
        ),
        "base_model_path": forms.CharField(
            max_length=1000,
            required=False,
            label="…or a model path / hub id",
            help_text="A local model directory or a Hugging Face model id (instead of a version).",
        ),
        "reward_model_version": ModelVersionChoice(
            queryset=ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD),
            required=False,
            label="Reward model",
            empty_label="— the round's, else the newest —",
        ),
        "reference_model_version": ModelVersionChoice(
            queryset=versions,
            required=False,
            label="Reference policy",
            empty_label="— the round's, else none —",
            help_text="PPO/DPO: the KL reference. Reward model: normalise rewards on its "
            "completions.",
        ),
        "update": forms.ChoiceField(
            choices=[("ppo", "PPO"), ("dpo", "DPO")],
            initial="ppo",
            label="Policy update",
        ),
        "ties": forms.BooleanField(required=False, help_text="Train on tied pairs too."),
        "fail_policy": forms.ChoiceField(
            choices=[(p, p) for p in FAIL_POLICIES],
            initial="drop",
            label="F items",
            help_text="drop: F completions give no pairs; rank_last: they lose to every "
            "ranked one.",
        ),
        "num_completions": forms.IntegerField(
            required=False,
            min_value=1,
            label="Completions per prompt (K)",
            help_text="Empty: the campaign's N (K must equal it).",
        ),
        "mix_policy": forms.IntegerField(
            required=False, min_value=0, label="…from the new policy",
            help_text="Empty mix: all K from the new policy.",
        ),
        "mix_previous": forms.IntegerField(
            required=False, min_value=0, label="…from the previous policy"
        ),
        "mix_reference": forms.IntegerField(
            required=False, min_value=0, label="…from the reference"
        ),
    }  # fmt: skip


class TrainingJobForm(forms.Form):
    """One job kind's form: the fields of its Request (help texts: their docstrings) and the
    hyper-parameters of its config sections."""

    def __init__(self, *args, kind: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.spec = KINDS[kind]
        self.job_field_names = job_field_names(self.spec)
        every = _all_fields()
        docs = field_docs(self.spec.Request)
        for name in self.job_field_names:
            self.fields[name] = every[name]
            if docs.get(name) and name not in MIX:
                self.fields[name].help_text = docs[name][:1].upper() + docs[name][1:] + "."
        for section in self.spec.sections:
            self.fields.update(config_form_fields(section))

    @property
    def job_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.job_field_names]

    @property
    def config_sections(self) -> list[tuple[ConfigSection, list[forms.BoundField]]]:
        return [
            (section, [self[name] for name in config_form_fields(section)])
            for section in self.spec.sections
        ]

    def config(self) -> dict[str, Any]:
        """The hyper-parameters as the service takes them (by section for a round job)."""
        config: dict[str, Any] = {}
        for section in self.spec.sections:
            prefix = section_prefix(section)
            values = {
                name.removeprefix(prefix): value
                for name, value in self.cleaned_data.items()
                if name.startswith(prefix) and name.removeprefix(prefix) in section.fields
            }
            if section.key:
                config[section.key] = values
            else:
                config.update(values)
        return config

    def request_fields(self) -> dict[str, Any]:
        """The fields of the kind's Request (besides ``created_by``)."""
        data = self.cleaned_data
        arguments: dict[str, Any] = {"config": self.config()}
        for name in self.job_field_names:
            if name in MIX:
                continue
            value = data.get(name)
            if name == "campaign_ids":
                value = sorted(c.pk for c in value) if value else None
            elif name == "base_model_path":
                value = (value or "").strip()
            elif name == "name":
                value = value or ""
            arguments[name] = value
        if any(name in self.job_field_names for name in MIX):
            mix = {n.removeprefix("mix_"): data[n] for n in MIX if data.get(n) is not None}
            arguments["mix"] = mix or None
        return {k: v for k, v in arguments.items() if v is not None}

    def add_service_error(self, exc: ServiceError) -> None:
        """A service error next to its field; a config error next to the parameter it names."""
        for field, messages in (exc.errors or {None: [exc.message]}).items():
            for message in messages:
                self.add_error(self._error_field(field, message), message)

    def _error_field(self, field: str | None, message: str) -> str | None:
        if field == "mix":
            return "mix_policy" if "mix_policy" in self.fields else None
        if field != "config":
            return field if field in self.fields else None
        named = []
        for section in self.spec.sections:
            if section.key and not message.startswith(f"{section.key}:"):
                continue
            for name in section.fields:
                if re.search(rf"\b{re.escape(name)}\b", message):
                    named.append((len(name), section_prefix(section) + name))
        return max(named)[1] if named else None


class ModelRegisterForm(forms.Form):
    """Register an existing model (a directory or a hub id) as a base or policy version; reward
    models are registered by their training job (as in the API)."""

    kind = forms.ChoiceField(
        choices=[(k, label) for k, label in ModelVersion.Kind.choices if k != "reward"],
        initial=ModelVersion.Kind.BASE,
    )
    name = forms.CharField(max_length=200)
    path = forms.CharField(
        max_length=1000,
        label="Path or hub id",
        help_text="What from_pretrained() loads: a local model directory or a Hugging Face id.",
    )


class RoundStartForm(forms.Form):
    """Start the RLHF loop on a campaign (``training.rounds.round_start``)."""

    campaign = CampaignChoice(queryset=Campaign.objects.filter(rlhf_round__isnull=True))
    policy = ModelVersionChoice(
        queryset=ModelVersion.objects.exclude(kind=ModelVersion.Kind.REWARD),
        help_text="The policy that generated the campaign's completions (or the loop's start).",
    )
    reference = ModelVersionChoice(
        queryset=ModelVersion.objects.exclude(kind=ModelVersion.Kind.REWARD),
        required=False,
        empty_label="— the policy —",
        label="KL reference",
        help_text="The frozen KL reference of every round.",
    )
    reward_scope = forms.ChoiceField(
        choices=Round.RewardScope.choices,
        initial=Round.RewardScope.ALL,
        label="Reward model trains on",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, field in config_form_fields(EVAL_SECTION).items():
            field.required = False  # left empty: the default
            self.fields[name] = field

    @property
    def round_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if not name.startswith(CONFIG_PREFIX)]

    @property
    def eval_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in config_form_fields(EVAL_SECTION)]

    def start_arguments(self) -> dict[str, Any]:
        """``rounds.round_start``'s keyword arguments (the evaluation settings as one dict)."""
        prefix = section_prefix(EVAL_SECTION)
        data = dict(self.cleaned_data)
        names = [name for name in data if name.startswith(prefix)]
        settings_ = {name.removeprefix(prefix): data.pop(name) for name in names}
        settings_ = {name: value for name, value in settings_.items() if value is not None}
        return {**data, "eval_settings": settings_}

    def add_service_error(self, exc: ServiceError) -> None:
        """An evaluation-settings error next to the setting it names, others next to theirs."""
        for field, messages in (exc.errors or {None: [exc.message]}).items():
            for message in messages:
                if field == "eval_settings":
                    named = [
                        name for name in EVAL_SECTION.fields if re.search(rf"\b{name}\b", message)
                    ]
                    field = section_prefix(EVAL_SECTION) + named[0] if named else None
                self.add_error(field if field in self.fields else None, message)


EVAL_SECTION = ConfigSection(
    EvalSettings,
    ("min_held_out_pairs", "reward_must_not_fall", "eval_fraction", "max_prompts",
     "samples_per_prompt", "max_new_tokens"),
    key="eval",
    title="Evaluation and review",
)  # fmt: skip
"""The round's evaluation settings the start form shows (inherited by every later round)."""
