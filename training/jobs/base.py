"""What a job kind is made of, and the checks every kind shares.

A kind (:class:`JobKind`) has three parts:

* a ``Request``: what an admin asks for (API or dashboard), a dataclass whose field docstrings
  are the help texts of both; unset fields fall back on the round's or the newest model;
* a ``Spec``: the resolved parameters the job runs with, a frozen dataclass stored as JSON in
  ``TrainingJob.params`` and read back through :meth:`Spec.from_params` (never by string key);
  hyper-parameters are the ``training.ml`` config dataclasses, stored in full, so a job records
  exactly what it ran with;
* ``build(request) -> Built`` checks the request and resolves it into a Spec (raising
  ``InvalidInput``/``Conflict`` naming the field), ``run(spec, ctx) -> JobOutcome`` runs it.

The lifecycle around them (create, enqueue, claim, run, finish, cancel, retry, sweep) is
:mod:`training.jobs.lifecycle`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from annotation.errors import InvalidInput
from annotation.models import Prompt, Ranking
from training import services
from training.ml.config import config_from_dict, type_hints
from training.ml.evaluation import EvalSettings
from training.models import ModelVersion, Round, TrainingJob

if TYPE_CHECKING:
    from training.jobs.lifecycle import JobReporter


# --- Parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Spec:
    """Parameters every kind has; a kind's Spec adds its own."""

    name: str = ""
    """name of the model version the job registers (default: ``<kind>-<job id>``)"""
    retry_of: int | None = None
    """the failed or cancelled job this one retries"""
    preflight: dict[str, Any] = field(default_factory=dict)
    """the memory plan checked when the job was created (``training.jobs.preflight``): memory
    per GPU by part, the peak, the GPUs; {} for kinds that are not estimated"""
    trackers: tuple[str, ...] = ()
    """experiment trackers the job reports its metrics to: tensorboard, mlflow, wandb"""

    def campaigns(self) -> list[int]:
        """The campaigns whose rankings or prompts the job reads (none named: the job's own
        ``campaign``, e.g. a round's)."""
        return []

    def starting_path(self) -> str:
        """The model directory or hub id the job starts from when it has no base version
        ("": the default base model, or none needed)."""
        return ""

    def to_params(self) -> dict[str, Any]:
        """The JSON stored in ``TrainingJob.params``."""
        return {f.name: to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> typing.Self:
        """Read a stored Spec back. Keys this version does not know are ignored and missing ones
        take their defaults, so jobs stored by an earlier version still run and retry."""
        hints = type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in params:
                values[f.name] = _from_json(params[f.name], hints[f.name])
        return cls(**values)


def to_json(value: Any) -> Any:
    """A Spec's value as JSON: dataclasses as objects, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def _from_json(value: Any, hint: Any) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def check_config(cls: type, config: Any, *, field: str = "config") -> Any:
    """The config dataclass of ``config`` (overrides of its defaults), or ``InvalidInput``."""
    if config is None:
        config = {}
    try:
        return config_from_dict(cls, config)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field) from None


# --- Requests -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class JobRequest:
    """What every kind's request has. A kind's ``Request`` adds its own fields; the field
    docstrings are the API's and the dashboard's help texts."""

    created_by: AbstractBaseUser | None = None
    round: Round | None = None
    """the RLHF round the job works for: its campaign and models fill in whatever is not given"""
    campaign_ids: list[int] = field(default_factory=list)
    """the campaigns whose rankings or prompts the job uses (with a round: the round's)"""
    name: str = ""
    """name of the model version the job registers"""
    config: dict[str, Any] = field(default_factory=dict)
    """hyper-parameters: overrides of the kind's config defaults"""
    trackers: list[str] = field(default_factory=list)
    """experiment trackers to report to, any of tensorboard, mlflow, wandb (the settings
    TRACKING_DIR, MLFLOW_TRACKING_URI, WANDB_PROJECT and WANDB_MODE say where)"""
    parent: TrainingJob | None = None
    """internal: the ``round`` job this one is a step of (then it is not queued)"""

    INTERNAL: ClassVar[frozenset[str]] = frozenset({"created_by", "parent"})

    def __post_init__(self) -> None:
        self.campaign_ids = sorted(set(self.campaign_ids or []))
        if self.config is None:
            self.config = {}
        if not isinstance(self.config, dict):
            raise InvalidInput("must be an object of hyper-parameters", field="config")
        from training.ml.tracking import TRACKERS

        self.trackers = list(dict.fromkeys(self.trackers or []))
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise InvalidInput(
                f"unknown tracker(s) {', '.join(map(str, unknown))}: use {', '.join(TRACKERS)}",
                field="trackers",
            )


@dataclass(kw_only=True)
class StartingPolicy:
    """Fields of a request that starts from a policy (mixed into a kind's Request)."""

    base_model_version: ModelVersion | None = None
    """the model to start from (default: the round's policy, else the default base model)"""
    base_model_path: str = ""
    """...or a local model directory or Hugging Face model id, instead of a version"""
    reference_model_version: ModelVersion | None = None
    """the KL reference (reward model: normalise rewards on its completions); default: the
    round's"""

    def check_models(self) -> None:
        self.base_model_path = (self.base_model_path or "").strip()
        if self.base_model_version is not None and self.base_model_path:
            raise InvalidInput(
                "give base_model_version or base_model_path, not both", field="base_model_path"
            )
        if self.base_model_version is not None and self.base_model_version.kind == "reward":
            raise InvalidInput("start from a base or policy model", field="base_model_version")
        reference = self.reference_model_version
        if reference is not None and reference.kind == ModelVersion.Kind.REWARD:
            raise InvalidInput("must be a base or policy model", field="reference_model_version")


@dataclass(kw_only=True)
class FromPairs:
    """Fields of a request that trains on preference pairs."""

    ties: bool = False
    """train on tied pairs too"""
    fail_policy: typing.Literal["drop", "rank_last"] = "drop"
    """F completions: ``drop`` gives them no pairs, ``rank_last`` makes them lose to every ranked
    one"""


# --- Kinds --------------------------------------------------------------------------------------


@dataclass
class Built:
    """A checked request: the Spec to store and the job row's own columns."""

    spec: Spec
    campaign_id: int | None = None
    base_model: ModelVersion | None = None
    round_id: int | None = None


@dataclass
class JobOutcome:
    """What a run returns: the model it wrote (if any) and a summary.

    ``version`` holds the keyword arguments of ``training.services.model_version_register``;
    the row is created in the same transaction that marks the job succeeded, after the directory
    is in place, so no ModelVersion ever points at a partial directory.
    """

    version: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    on_success: Callable[[TrainingJob, ModelVersion | None], None] | None = None
    """called in the transaction that marks the job succeeded, with the registered version (a
    round records its new reward model or policy this way: both happen, or neither)"""


@dataclass
class RunContext:
    """What a run gets besides its Spec: the job row, the reporter (progress, metrics, log,
    cancellation) and the lifecycle's two entry points a kind may need (given here, so no kind
    imports the lifecycle, which imports every kind)."""

    job: TrainingJob
    reporter: JobReporter
    queue: Callable[[str, JobRequest], TrainingJob]
    """create a job of a kind from its request (``lifecycle.job_create``): queued when the
    transaction commits, or, with ``parent`` set, left for ``run_step``"""
    run_step: Callable[..., TrainingJob]
    """``run_step(step, follow=None)``: run a step of this job here and now, telling
    ``follow(step, total)`` its progress; returns it finished"""

    @property
    def on_progress(self):
        return self.reporter.on_progress

    @property
    def should_stop(self):
        return self.reporter.should_stop

    def log(self, message: str) -> None:
        self.reporter.log(message)


@dataclass(frozen=True)
class ConfigSection:
    """A group of hyper-parameters of a kind: one config class, the fields the dashboard shows
    (the rest keep their defaults) and, for a ``round`` job, its key in ``config``."""

    cls: type
    fields: tuple[str, ...]
    key: str | None = None
    title: str = "Hyper-parameters"


class JobKind:
    """One kind of job. Subclasses set the class attributes and implement ``build`` and
    ``run``."""

    kind: ClassVar[str]
    title: ClassVar[str]
    """what the dashboard's button and form say"""
    blurb: ClassVar[str]
    Request: ClassVar[type[JobRequest]]
    Spec: ClassVar[type[Spec]]
    sections: ClassVar[tuple[ConfigSection, ...]] = ()
    created_here: ClassVar[bool] = True
    """False for a kind queued by its own endpoint (acquisition), not by the job form"""

    def build(self, request: Any) -> Built:
        raise NotImplementedError

    def run(self, spec: Any, ctx: RunContext) -> JobOutcome:
        raise NotImplementedError

    def spec(self, job: TrainingJob) -> Any:
        """The job's stored parameters as this kind's Spec."""
        return self.Spec.from_params(job.params)

    def request_fields(self) -> list[dataclasses.Field]:
        """The fields an admin fills in, in order (API serializer and dashboard form)."""
        return [f for f in dataclasses.fields(self.Request) if f.name not in JobRequest.INTERNAL]


# --- Checks shared by the kinds -----------------------------------------------------------------


def require_campaigns(campaign_ids: list[int]) -> None:
    if not campaign_ids:
        raise InvalidInput("name at least one campaign", field="campaign_ids")


def require_rankings(campaign_ids: list[int], *, field: str = "campaign_ids") -> None:
    if not Ranking.objects.filter(campaign_id__in=campaign_ids).exists():
        raise InvalidInput("these campaigns have no rankings yet", field=field)


def require_prompts(campaign_ids: list[int]) -> None:
    if not Prompt.objects.filter(campaign_id__in=campaign_ids).exists():
        raise InvalidInput("these campaigns have no prompts", field="campaign_ids")


def single(campaign_ids: list[int]) -> int | None:
    """The job's campaign column: its one campaign, else none."""
    return campaign_ids[0] if len(campaign_ids) == 1 else None


def round_pk(request: JobRequest) -> int | None:
    return request.round.pk if request.round is not None else None


def starting_policy(request: Any, *, round_default: ModelVersion | None) -> ModelVersion | None:
    """The policy a job starts from: the version asked for, else the round's, else none (the run
    then loads ``base_model_path`` or the default base model)."""
    if request.base_model_version is not None:
        return request.base_model_version
    if request.base_model_path:
        return None
    return round_default


def evaluation_for(request: Any) -> EvalSettings:
    """The evaluation settings of a PPO or DPO job: the round's, or the request's."""
    if request.round is not None:
        if request.evaluation:
            raise InvalidInput("a round job uses the round's eval_settings", field="evaluation")
        return check_config(EvalSettings, request.round.eval_settings, field="eval_settings")
    return check_config(EvalSettings, request.evaluation or {}, field="evaluation")


def starting_model(job: TrainingJob, spec: Any) -> str:
    """The job's starting model as registered: its base version's path (a directory or an
    object store URL), else the path it was given, else the default base model."""
    if job.base_model is not None:
        return job.base_model.path
    return spec.starting_path() or settings.DEFAULT_BASE_MODEL


def base_path(job: TrainingJob, spec: Any) -> str:
    """The local directory the job loads its starting model from (:func:`starting_model`,
    fetched from the object store when it is a URL)."""
    return services.model_path(starting_model(job, spec))


def version(pk: int | None) -> ModelVersion | None:
    return ModelVersion.objects.get(pk=pk) if pk is not None else None
