"""Dashboard pages for training: start jobs, follow them live, model versions and their lineage.

Jobs are created, cancelled and retried through ``training.jobs.lifecycle`` (the API's path
too); rounds are started through ``training.rounds``. The job page is a shell plus
static/dashboard/job.js, which polls the JSON API.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import permissions
from annotation.errors import NotFound, ServiceError
from config.dashboard import MAX_ID, add_service_error, training_required
from training import exports, rounds, selectors, services
from training.api.serializers import TrainingJobSerializer
from training.dashboard import forms
from training.jobs import KINDS, lifecycle
from training.ml.config import (
    DPOConfig,
    PPOConfig,
    RewardModelConfig,
    config_from_dict,
    recommended_overrides,
)
from training.ml.evaluation import EvalSettings
from training.models import ModelVersion, Round, TrainingJob
from training.overoptimisation import curve_plot

POLL_MS = 1500

CHARTS: dict[str, list[dict]] = {
    TrainingJob.Kind.REWARD_MODEL: [
        {"title": "Loss", "keys": ["reward/loss"]},
        {"title": "Accuracy", "keys": ["reward/accuracy", "eval/accuracy"], "unit": "fraction"},
        {"title": "Margin (chosen - rejected)", "keys": ["reward/margin", "eval/margin"]},
    ],
    TrainingJob.Kind.PPO: [
        {"title": "Reward", "keys": ["ppo/score", "ppo/reward_normalized", "ppo/reward_total"]},
        {"title": "KL to the reference and β", "keys": ["ppo/kl_ref", "ppo/beta"]},
        {"title": "Entropy", "keys": ["ppo/entropy"]},
        {"title": "Clip fraction and approx. KL", "keys": ["ppo/clipfrac", "ppo/approx_kl"]},
        {"title": "Losses", "keys": ["ppo/policy_loss", "ppo/value_loss"]},
    ],
    TrainingJob.Kind.DPO: [
        {"title": "Loss", "keys": ["dpo/loss"]},
        {"title": "Accuracy", "keys": ["dpo/accuracy"], "unit": "fraction"},
        {"title": "Implicit rewards", "keys": ["dpo/chosen_reward", "dpo/rejected_reward"]},
    ],
}


def _id_param(request: HttpRequest, name: str) -> int | None:
    value = request.GET.get(name, "")
    return int(value) if value.isdigit() and 0 < int(value) <= MAX_ID else None


def _initial(request: HttpRequest, kind: str) -> dict:
    """Prefill from ?campaign= and ?round= (the buttons on the campaign and round pages)."""
    initial: dict = {}
    if (campaign_id := _id_param(request, "campaign")) is not None:
        trainable = permissions.campaigns_where(request.user, permissions.TRAIN)
        campaign = trainable.filter(pk=campaign_id).first()
        if campaign is not None:
            initial["campaign_ids"] = [campaign]
            if kind == TrainingJob.Kind.GENERATE:
                initial["target_campaign"] = campaign
    if (round_id := _id_param(request, "round")) is not None:
        initial["round"] = selectors.round_list(user=request.user).filter(pk=round_id).first()
    return initial


def _job(request: HttpRequest, job_id: int) -> TrainingJob:
    if job_id > MAX_ID:
        raise Http404("training job not found")
    try:
        return selectors.training_job_get(user=request.user, job_id=job_id)
    except NotFound as exc:
        raise Http404(exc.message) from exc


# --- Jobs ---------------------------------------------------------------------------------------


@training_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    """Every job, newest first (optionally one campaign's), and the buttons to start one."""
    jobs = selectors.training_job_list(user=request.user).select_related(
        "campaign", "result_version"
    )
    campaign = None
    if (campaign_id := _id_param(request, "campaign")) is not None:
        campaign = (
            permissions.campaigns_where(request.user, permissions.VIEW)
            .filter(pk=campaign_id)
            .first()
        )
        if campaign is not None:
            jobs = jobs.filter(campaign=campaign)
    return render(
        request,
        "dashboard/jobs.html",
        {
            "nav": "jobs",
            "jobs": [(job, _spec(job)) for job in jobs[:200]],
            "campaign": campaign,
            "kinds": [(kind, spec.title) for kind, spec in forms.KINDS.items()],
            "trains": permissions.trains_anywhere(request.user),
            "poll_ms": POLL_MS,
        },
    )


@training_required
@require_http_methods(["GET", "POST"])
def job_create(request: HttpRequest, kind: str) -> HttpResponse:
    """The form of one job kind; POST validates through the services and queues the job."""
    if kind not in forms.KINDS:
        raise Http404("unknown job kind")
    if not permissions.trains_anywhere(request.user):
        raise DjangoPermissionDenied("starting training needs the trainer role in a team")
    initial = _initial(request, kind)
    recommended, recommended_by = _recommended(kind, initial.get("round"))
    form = forms.TrainingJobForm(
        request.POST if request.method == "POST" else None,
        initial=initial,
        kind=kind,
        user=request.user,
        recommended=recommended,
        recommended_by=recommended_by,
    )
    plan = None
    if request.method == "POST" and form.is_valid():
        try:
            request_ = form.spec.Request(created_by=request.user, **form.request_fields())
            job = lifecycle.job_create(kind, request_, from_form=True)
        except ServiceError as exc:
            form.add_service_error(exc)
            plan = getattr(exc, "plan", None)
            plan = plan.to_dict() if plan is not None else None
        else:
            job.refresh_from_db()  # the broker was asked when the job committed
            if job.waiting_for_queue:
                messages.warning(
                    request,
                    f"{job.get_kind_display()} #{job.pk} is stored but waiting for the queue: "
                    "the broker did not answer. It is queued as soon as the broker answers; "
                    "nothing needs doing.",
                )
            else:
                messages.success(request, f"{job.get_kind_display()} #{job.pk} queued.")
            return redirect("training-dashboard:job", job_id=job.pk)
    return render(
        request,
        "dashboard/job_form.html",
        {
            "nav": "jobs",
            "form": form,
            "kind": kind,
            "spec": forms.KINDS[kind],
            "warnings": _round_warnings(kind, form.initial.get("round")),
            "review": _round_review(kind, form.initial.get("round")),
            "plan": plan or _form_plan(kind, form.initial.get("round"), recommended),
        },
        status=400 if form.errors else 200,
    )


def _form_plan(kind: str, rnd: Round | None, recommended: dict) -> dict | None:
    """The memory plan of the form as it comes (its prefilled hyper-parameters, the round's
    models or the default base model), shown beside it; None for kinds not estimated."""
    from training.jobs.preflight import job_plan

    classes = {"reward_model": RewardModelConfig, "ppo": PPOConfig, "dpo": DPOConfig}
    if kind not in classes:
        return None
    cls = classes[kind]
    try:
        config = config_from_dict(cls, recommended.get(cls.__name__, {}))
    except ValueError:
        config = cls()
    policy = settings.DEFAULT_BASE_MODEL
    reward = None
    if rnd is not None:
        policy = (rnd.reference if kind == "reward_model" else rnd.policy_before).path
        reward = rnd.reward_model.path if rnd.reward_model is not None else None
    if kind == "ppo" and reward is None:
        newest = ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD).first()
        reward = newest.path if newest is not None else None
    plan = job_plan(kind, model_path=policy, config=config, reward_path=reward)
    return plan.to_dict() if plan is not None else None


def _recommended(kind: str, rnd: Round | None) -> tuple[dict, str]:
    """The hyper-parameters a round's model recommends for its jobs (its ``training_defaults.json``)
    and the model's name: the policy the job starts from, else the round's KL reference (the
    loop's base, whose size every later policy shares). Nothing without a round."""
    if rnd is None:
        return {}, ""
    policy = rnd.policy_before
    if kind == TrainingJob.Kind.GENERATE and rnd.policy_after is not None:
        policy = rnd.policy_after
    for version in (policy, rnd.reference):
        recommended = recommended_overrides(version.path)
        if recommended:
            return recommended, version.name
    return {}, ""


def _spec(job: TrainingJob):
    """The job's parameters as its kind's Spec (None for a kind this version does not know)."""
    kind = KINDS.get(job.kind)
    return kind.spec(job) if kind is not None else None


def _round_review(kind: str, rnd: Round | None) -> str:
    """When the round is held for review, from its evaluation settings (set when it started)."""
    if kind not in (TrainingJob.Kind.ROUND, TrainingJob.Kind.PPO, TrainingJob.Kind.DPO):
        return ""
    default = EvalSettings()
    settings_ = rounds.eval_settings_clean(rnd.eval_settings if rnd else {})
    minimum = settings_["min_held_out_pairs"]
    whose = f"Round {rnd.number}" if rnd else "A round"
    source = "the round's evaluation settings" if rnd else "the default evaluation settings"
    if rnd and minimum != default.min_held_out_pairs:
        source += f"; a new round's default is {default.min_held_out_pairs}"
    text = (
        f"{whose} is held for review, before it generates the next campaign, if its reward model "
        f"is evaluated on fewer than {minimum} held-out pairs ({source})"
    )
    if settings_["reward_must_not_fall"]:
        text += " or if the update lowers the reward on held-out prompts"
    return text + "."


def _round_warnings(kind: str, rnd: Round | None) -> list[str]:
    """What would hold a round for review, known before it runs: too few pairs for the reward
    model's held-out set."""
    if kind not in (TrainingJob.Kind.ROUND, TrainingJob.Kind.REWARD_MODEL) or rnd is None:
        return []
    minimum = rounds.eval_settings_clean(rnd.eval_settings)["min_held_out_pairs"]
    pairs = len(exports.preference_pairs(campaign_ids=[rnd.campaign_id]))
    expected = int(pairs * RewardModelConfig().eval_fraction)
    if expected >= minimum:
        return []
    return [
        f"Round {rnd.number}'s campaign has {pairs} preference pairs so far: about {expected} "
        f"would be held out to evaluate the reward model, fewer than {minimum}, so the round "
        "would be held for review. Label more first, or lower min_held_out_pairs in the "
        "round's evaluation settings."
    ]


@training_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    """The job's live page: status, progress, metric charts, log tail, error, cancel."""
    job = _job(request, job_id)
    config = {
        "job": TrainingJobSerializer(job).data,
        "charts": CHARTS.get(job.kind, []),
        "poll_ms": POLL_MS,
        "urls": {
            "job": reverse("training-job-detail", args=[job.pk]),
            "metrics": reverse("training-job-metrics", args=[job.pk]),
            "cancel": reverse("training-job-cancel", args=[job.pk]),
            "step": reverse("training-dashboard:job", args=[0]),
        },
    }
    return render(
        request,
        "dashboard/job.html",
        {
            "nav": "jobs",
            "job": job,
            "spec": _spec(job),
            "config": config,
            "steps": job.steps.order_by("created_at", "id"),
            "samples": policy_samples((job.summary or {}).get("evaluation") or {}),
        },
    )


@training_required
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    """Cancel without JavaScript (the page's script calls the API's cancel instead)."""
    job = _job(request, job_id)
    try:
        selectors.require_trainer(user=request.user, team=job.team)
        lifecycle.job_cancel(job=job)
    except ServiceError as exc:
        messages.error(request, exc.message.capitalize() + ".")
    else:
        messages.success(request, "Cancellation requested.")
    return redirect("training-dashboard:job", job_id=job.pk)


@training_required
@require_POST
def job_retry(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _job(request, job_id)
    try:
        selectors.require_trainer(user=request.user, team=job.team)
        new = lifecycle.job_retry(job=job, created_by=request.user)
    except ServiceError as exc:
        messages.error(request, exc.message.capitalize() + ".")
        return redirect("training-dashboard:job", job_id=job.pk)
    messages.success(request, f"Retrying as #{new.pk}.")
    return redirect("training-dashboard:job", job_id=new.pk)


# --- Model versions and rounds ------------------------------------------------------------------


def _number(value) -> str:
    """A metric for people: four significant digits, integers as they are."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics(metrics: dict) -> tuple[list, list]:
    """(headline, the rest): evaluation figures first, counts and training figures folded."""
    items = [(key, _number(value)) for key, value in metrics.items()]
    headline = [item for item in items if item[0].startswith(("eval/", "evaluation/"))]
    return headline[:10], [item for item in items if item not in headline[:10]]


def _lineage(versions: list[ModelVersion]) -> list[tuple[ModelVersion, int]]:
    """Versions as a tree (parent → children), depth-first, oldest root first."""
    children: dict[int | None, list[ModelVersion]] = {}
    ids = {v.pk for v in versions}
    for version in sorted(versions, key=lambda v: (v.created_at, v.pk)):
        parent = version.parent_id if version.parent_id in ids else None
        children.setdefault(parent, []).append(version)
    ordered: list[tuple[ModelVersion, int]] = []

    def walk(parent: int | None, depth: int) -> None:
        for version in children.get(parent, []):
            ordered.append((version, depth))
            walk(version.pk, depth + 1)

    walk(None, 0)
    return ordered


EVALUATION_COLUMNS = ("policy_before", "policy_after", "delta")


def _evaluation_table(evaluation: dict) -> dict:
    """A round's evaluation (training.jobs.update.evaluate_update) as a table: the policy before,
    after, and the difference as columns, their figures as rows; the scalars (algorithm, job,
    held-out prompts) as notes. Other nested values (settings, examples) are left out."""
    if not evaluation:
        return {"columns": [], "rows": [], "notes": [], "samples": []}
    nested = {k: v for k, v in evaluation.items() if isinstance(v, dict)}
    if any(c in nested for c in EVALUATION_COLUMNS):
        nested = {c: nested[c] for c in EVALUATION_COLUMNS if c in nested}
    columns = list(nested)
    keys: list[str] = []
    for values in nested.values():
        keys += [k for k in values if k not in keys and not isinstance(values[k], dict | list)]
    rows = [(key, [_number(nested[c].get(key)) for c in columns]) for key in keys]
    notes = [
        (key.replace("_", " "), _number(value))
        for key, value in evaluation.items()
        if not isinstance(value, dict | list)
    ]
    return {"columns": columns, "rows": rows, "notes": notes, "samples": policy_samples(evaluation)}


def policy_samples(evaluation: dict) -> list[dict]:
    """The same held-out prompts answered by the policy before and after the update."""
    before = (evaluation.get("policy_before") or {}).get("examples") or []
    after = (evaluation.get("policy_after") or {}).get("examples") or []
    return [
        {
            "prompt": b.get("prompt", ""),
            "before": b.get("completion", ""),
            "after": a.get("completion", ""),
        }
        for b, a in zip(before, after, strict=False)
        if isinstance(b, dict) and isinstance(a, dict)
    ]


def _models_page(
    request: HttpRequest,
    *,
    register_form: forms.ModelRegisterForm | None = None,
    round_form: forms.RoundStartForm | None = None,
    status: int = 200,
) -> HttpResponse:
    versions = list(
        selectors.model_version_list(user=request.user).select_related("created_by_job__campaign")
    )
    cards = []
    round_list = list(selectors.round_list(user=request.user))
    curves = selectors.round_gold_curves(rounds=round_list)
    for rnd in round_list:
        jobs = list(selectors.round_jobs(round=rnd))
        generated = [j for j in jobs if j.kind == TrainingJob.Kind.GENERATE and j.summary]
        cards.append(
            {
                "round": rnd,
                "state": rounds.round_state(rnd, jobs),
                "jobs": jobs,
                "evaluation": _evaluation_table(rnd.evaluation),
                "generation": generated[-1].summary if generated else None,
                "curve": curves.get(rnd.pk),
                "curve_plot": curve_plot(curves[rnd.pk]) if rnd.pk in curves else None,
                "started_anyway_by": generated[-1].created_by if generated else None,
                "active": next(
                    (
                        j
                        for j in reversed(jobs)
                        if j.parent_id is None and j.status not in TrainingJob.FINISHED
                    ),
                    None,
                ),
            }
        )
    return render(
        request,
        "dashboard/models.html",
        {
            "nav": "models",
            "lineage": [
                (version, depth, _metrics(version.metrics)) for version, depth in _lineage(versions)
            ],
            "rounds": cards,
            "register_form": register_form or forms.ModelRegisterForm(user=request.user),
            "round_form": round_form or forms.RoundStartForm(user=request.user),
            "trains": permissions.trains_anywhere(request.user),
        },
        status=status,
    )


@training_required
@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    """Rounds (campaign → reward model → policy → next campaign, with the evaluation of each
    update against the policy before it), and every model version as a lineage tree."""
    return _models_page(request)


@training_required
@require_POST
def model_register(request: HttpRequest) -> HttpResponse:
    """Register a base or policy model (services.model_version_register, as the API does)."""
    form = forms.ModelRegisterForm(request.POST, user=request.user)
    if form.is_valid():
        data = dict(form.cleaned_data)
        chosen = data.pop("team", None)
        try:
            team = selectors.team_for_model(
                user=request.user, team_id=chosen.pk if chosen else None
            )
            version = services.model_version_register(team=team, **data)
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Registered {version.name} (#{version.pk}).")
            return redirect(reverse("training-dashboard:models") + f"#version-{version.pk}")
    return _models_page(request, register_form=form, status=400)


@training_required
@require_POST
def round_create(request: HttpRequest) -> HttpResponse:
    """Start the RLHF loop on a campaign (rounds.round_start)."""
    form = forms.RoundStartForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            selectors.require_trainer(user=request.user, team=form.cleaned_data["campaign"].team)
            rnd = rounds.round_start(created_by=request.user, **form.start_arguments())
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, f"Round {rnd.number} started on {rnd.campaign.name}.")
            return redirect(reverse("training-dashboard:models") + f"#round-{rnd.pk}")
    return _models_page(request, round_form=form, status=400)
