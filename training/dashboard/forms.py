"""The training job form: what to train on, which model to start from, and the main
hyper-parameters, each prefilled with its config dataclass's default and documented with the
docstring written under the field (one source of truth: ``training.ml``'s config classes).

Only the shape is checked here; the rules are ``training.services``' (the API's too), whose
errors the view puts next to the field they name.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from django import forms

from annotation.errors import ServiceError
from annotation.exports import FAIL_POLICIES
from annotation.models import Campaign
from training.models import ModelVersion, Round, TrainingJob

CONFIG_PREFIX = "config__"


@dataclass(frozen=True)
class Section:
    """A group of hyper-parameters: one config dataclass, the fields shown (the rest keep their
    defaults) and, for a ``round`` job, the key of its section in ``config``."""

    config_kind: str
    """the job kind whose config class this is (``training.services.CONFIG_CLASSES``)"""
    fields: tuple[str, ...]
    key: str | None = None
    title: str = "Hyper-parameters"


@dataclass(frozen=True)
class KindSpec:
    """How the form of one job kind looks."""

    title: str
    blurb: str
    job_fields: tuple[str, ...]
    """the form's non-config fields, in order (``training_job_create_from_form`` arguments)"""
    sections: tuple[Section, ...]


RM_FIELDS = ("num_epochs", "learning_rate", "lr_schedule", "batch_size", "max_length",
             "tie_loss", "eval_fraction", "seed")  # fmt: skip
PPO_FIELDS = ("total_steps", "rollout_batch_size", "learning_rate", "kl_coef", "adaptive_kl",
              "kl_target", "clip_range", "ppo_epochs", "mini_batch_size", "temperature",
              "max_new_tokens", "ent_coef", "use_lora", "seed")  # fmt: skip
DPO_FIELDS = ("beta", "learning_rate", "num_epochs", "batch_size", "warmup_steps",
              "max_prompt_tokens", "max_completion_tokens", "seed")  # fmt: skip
SAMPLING_FIELDS = ("temperature", "top_p", "max_new_tokens", "batch_size", "seed")
MIX = ("mix_policy", "mix_previous", "mix_reference")

KINDS: dict[str, KindSpec] = {
    TrainingJob.Kind.REWARD_MODEL: KindSpec(
        title="Train a reward model",
        blurb="A Bradley-Terry reward model on the campaigns' preference pairs (with a round: "
        "its campaigns so far), registered as a reward model version when it succeeds.",
        job_fields=(
            "round",
            "campaign_ids",
            "name",
            "base_model_version",
            "base_model_path",
            "reference_model_version",
            "ties",
            "fail_policy",
        ),
        sections=(Section(TrainingJob.Kind.REWARD_MODEL, RM_FIELDS),),
    ),
    TrainingJob.Kind.PPO: KindSpec(
        title="Run a PPO round",
        blurb="Optimise the policy against a reward model with PPO on the campaigns' prompts, "
        "with a KL penalty towards the reference; evaluated against the policy it started from.",
        job_fields=(
            "round",
            "campaign_ids",
            "name",
            "base_model_version",
            "base_model_path",
            "reward_model_version",
            "reference_model_version",
        ),
        sections=(Section(TrainingJob.Kind.PPO, PPO_FIELDS),),
    ),
    TrainingJob.Kind.DPO: KindSpec(
        title="Run DPO",
        blurb="Direct preference optimisation of the policy on the campaigns' pairs, towards "
        "the reference; no reward model needed.",
        job_fields=(
            "round",
            "campaign_ids",
            "name",
            "base_model_version",
            "base_model_path",
            "reference_model_version",
            "ties",
            "fail_policy",
        ),
        sections=(Section(TrainingJob.Kind.DPO, DPO_FIELDS),),
    ),
    TrainingJob.Kind.GENERATE: KindSpec(
        title="Start the next round: generate completions",
        blurb="Sample K completions per prompt from a policy. With a trained round: into the "
        "next round's new campaign (same settings, members and guidelines), which opens. "
        "Without: as tasks of the target campaign.",
        job_fields=(
            "round",
            "campaign_ids",
            "target_campaign",
            "name",
            "base_model_version",
            "base_model_path",
            "reference_model_version",
            "num_completions",
            *MIX,
        ),
        sections=(Section(TrainingJob.Kind.GENERATE, SAMPLING_FIELDS),),
    ),
    TrainingJob.Kind.ROUND: KindSpec(
        title="Run a whole round",
        blurb="Reward model, then PPO or DPO, then generation of the next campaign's "
        "completions, one after the other as steps of one job.",
        job_fields=(
            "round",
            "campaign_ids",
            "name",
            "base_model_version",
            "reference_model_version",
            "update",
            "ties",
            "fail_policy",
            "num_completions",
            *MIX,
        ),
        sections=(
            Section(
                TrainingJob.Kind.REWARD_MODEL,
                ("num_epochs", "learning_rate", "batch_size", "max_length", "seed"),
                key="reward_model",
                title="Reward model",
            ),
            Section(
                TrainingJob.Kind.PPO,
                (
                    "total_steps",
                    "rollout_batch_size",
                    "learning_rate",
                    "kl_coef",
                    "clip_range",
                    "seed",
                ),
                key="ppo",
                title="PPO (update = ppo)",
            ),
            Section(
                TrainingJob.Kind.DPO,
                ("beta", "learning_rate", "num_epochs", "batch_size", "seed"),
                key="dpo",
                title="DPO (update = dpo)",
            ),
            Section(
                TrainingJob.Kind.GENERATE,
                ("temperature", "top_p", "max_new_tokens", "seed"),
                key="sampling",
                title="Sampling the next campaign",
            ),
        ),
    ),
}


# --- Config dataclasses → form fields -----------------------------------------------------------


def config_class(kind: str) -> type:
    from training.services import config_class as service_config_class

    return service_config_class(kind)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (cleanrl style), by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


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


def section_prefix(section: Section) -> str:
    return CONFIG_PREFIX + (f"{section.key}__" if section.key else "")


def config_form_fields(section: Section) -> dict[str, forms.Field]:
    """Form fields for a section's hyper-parameters, prefilled with the class's defaults."""
    cls = config_class(section.config_kind)
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
    """One job kind's form: its job fields (``KindSpec.job_fields``) and hyper-parameters."""

    def __init__(self, *args, kind: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.spec = KINDS[kind]
        every = _all_fields()
        for name in self.spec.job_fields:
            self.fields[name] = every[name]
        for section in self.spec.sections:
            self.fields.update(config_form_fields(section))

    @property
    def job_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.spec.job_fields]

    @property
    def config_sections(self) -> list[tuple[Section, list[forms.BoundField]]]:
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

    def service_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``training_job_create_from_form`` (besides kind, user)."""
        data = self.cleaned_data
        arguments: dict[str, Any] = {"config": self.config()}
        for name in self.spec.job_fields:
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
        if any(name in self.spec.job_fields for name in MIX):
            mix = {n.removeprefix("mix_"): data[n] for n in MIX if data.get(n) is not None}
            arguments["mix"] = mix or None
        return {k: v for k, v in arguments.items() if v is not None or k in ("round",)}

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
    """Start the RLHF loop on a campaign (``training.services.round_start``)."""

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
