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

from annotation import permissions
from annotation.errors import ServiceError
from annotation.exports import FAIL_POLICIES
from annotation.models import Campaign
from training import selectors
from training.jobs import KINDS as JOB_KINDS
from training.jobs.base import ConfigSection, JobKind
from training.ml.config import field_docs
from training.ml.evaluation import EvalSettings
from training.ml.tracking import TRACKERS
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


def config_form_fields(
    section: ConfigSection, recommended: dict[str, Any] | None = None, *, by: str = ""
) -> dict[str, forms.Field]:
    """Form fields for a section's hyper-parameters, prefilled with the class's defaults, or with
    the values the model ``by`` recommends (``recommended``: overrides of the section's class;
    each is shown, a parameter the section does not show included, its help naming the
    default)."""
    cls = section.cls
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    prefix = section_prefix(section)
    recommended = {k: v for k, v in (recommended or {}).items() if k in by_name}
    names = [*section.fields, *(name for name in recommended if name not in section.fields)]
    fields = {}
    for name in names:
        field = _form_field(by_name[name], hints[name], docs.get(name, ""))
        if name in recommended:
            field.initial = recommended[name]
            field.help_text += (
                f" ({by} recommends {_shown(recommended[name])}; the default is "
                f"{_shown(_default(by_name[name]))}.)"
            )
        fields[prefix + name] = field
    return fields


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


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


def _all_fields(user) -> dict[str, forms.Field]:
    """Every non-config field a job form may show to ``user`` (the campaigns, rounds and models
    of the teams they train in); each kind picks its own (KindSpec)."""
    models = selectors.model_version_list(user=user)
    versions = models.exclude(kind=ModelVersion.Kind.REWARD)
    campaigns = permissions.campaigns_where(user, permissions.TRAIN)
    return {
        "round": RoundChoice(
            queryset=selectors.round_list(user=user)
            .filter(campaign__in=campaigns)
            .exclude(status=Round.Status.COMPLETED),
            required=False,
            empty_label="— no round —",
            help_text="Tie the job to an RLHF round: its campaign and models fill in whatever "
            "is left empty below.",
        ),
        "campaign_ids": forms.ModelMultipleChoiceField(
            queryset=campaigns.order_by("-created_at", "-id"),
            required=False,
            label="Campaigns",
            help_text="Whose rankings (or prompts) the job uses.",
            widget=forms.SelectMultiple(attrs={"size": 4}),
        ),
        "target_campaign": CampaignChoice(
            queryset=campaigns.exclude(status=Campaign.Status.CLOSED),
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
            queryset=models.filter(kind=ModelVersion.Kind.REWARD),
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
        "trackers": forms.MultipleChoiceField(
            choices=[(name, name) for name in TRACKERS],
            required=False,
            label="Experiment trackers",
            widget=forms.CheckboxSelectMultiple,
        ),
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

    def __init__(
        self,
        *args,
        kind: str,
        user,
        recommended: dict[str, dict[str, Any]] | None = None,
        recommended_by: str = "",
        **kwargs,
    ) -> None:
        """``recommended``: the hyper-parameters the model the job starts from recommends, by
        config class (``training.ml.config.recommended_overrides``); ``recommended_by``: its
        name."""
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.recommended_by = recommended_by if recommended else ""
        self.spec = KINDS[kind]
        self.job_field_names = job_field_names(self.spec)
        every = _all_fields(user)
        docs = field_docs(self.spec.Request)
        for name in self.job_field_names:
            self.fields[name] = every[name]
            if docs.get(name) and name not in MIX:
                self.fields[name].help_text = docs[name][:1].upper() + docs[name][1:] + "."
        self.section_fields: list[list[str]] = []
        for section in self.spec.sections:
            values = (recommended or {}).get(section.cls.__name__)
            fields = config_form_fields(section, values, by=recommended_by)
            self.section_fields.append(list(fields))
            self.fields.update(fields)

    @property
    def job_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.job_field_names]

    @property
    def config_sections(self) -> list[tuple[ConfigSection, list[forms.BoundField]]]:
        return [
            (section, [self[name] for name in names])
            for section, names in zip(self.spec.sections, self.section_fields, strict=True)
        ]

    def config(self) -> dict[str, Any]:
        """The hyper-parameters as the service takes them (by section for a round job)."""
        config: dict[str, Any] = {}
        for section, names in zip(self.spec.sections, self.section_fields, strict=True):
            prefix = section_prefix(section)
            values = {name.removeprefix(prefix): self.cleaned_data.get(name) for name in names}
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
            elif name == "trackers":
                value = list(value or [])
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
        for section, names in zip(self.spec.sections, self.section_fields, strict=True):
            if section.key and not message.startswith(f"{section.key}:"):
                continue
            prefix = section_prefix(section)
            for name in (n.removeprefix(prefix) for n in names):
                if re.search(rf"\b{re.escape(name)}\b", message):
                    named.append((len(name), prefix + name))
        return max(named)[1] if named else None


class ModelRegisterForm(forms.Form):
    """Register an existing model (a directory or a hub id) as a base or policy version; reward
    models are registered by their training job (as in the API). It belongs to a team the user
    trains in (the field shows when there is a choice; see ``selectors.team_for_model``)."""

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        everywhere = permissions.can(user, permissions.TRAIN)
        teams = permissions.teams_where(user, permissions.TRAIN)
        if everywhere or teams.count() > 1:
            self.fields["team"] = forms.ModelChoiceField(
                queryset=teams,
                required=not everywhere,
                empty_label="— every team (shared) —",
                help_text="Who sees and uses the model.",
            )

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
    """Start the RLHF loop on a campaign (``training.rounds.round_start``) of a team the user
    trains in, from models that team may use."""

    campaign = CampaignChoice(queryset=Campaign.objects.none())
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

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["campaign"].queryset = permissions.campaigns_where(
            user, permissions.TRAIN
        ).filter(rlhf_round__isnull=True)
        versions = selectors.model_version_list(user=user).exclude(kind=ModelVersion.Kind.REWARD)
        self.fields["policy"].queryset = versions
        self.fields["reference"].queryset = versions
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
