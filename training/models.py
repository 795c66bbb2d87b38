"""Training records: jobs, their metrics, the model versions they produce, and RLHF rounds.

A ModelVersion row exists only for a complete model directory: the ML code writes to a
temporary directory and renames it into the model store, and the row is created after that.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        BASE = "base", "Base / SFT policy"
        REWARD = "reward", "Reward model"
        POLICY = "policy", "Policy"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=200)
    path = models.CharField(
        max_length=1000,
        help_text="What from_pretrained() loads: a directory in the model store, any local "
        "directory, or a Hugging Face model id.",
    )
    base = models.CharField(
        max_length=1000, blank=True, help_text="The model this one was initialised from."
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    created_by_job = models.ForeignKey(
        "TrainingJob",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    team = models.ForeignKey(
        "annotation.Team",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The team whose labels trained it, who alone see it; none: shared by every "
        "team (base models registered by a platform admin).",
    )
    metrics = models.JSONField(default=dict, blank=True)
    reward_offset = models.FloatField(null=True, blank=True)
    reward_scale = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["base", "reward", "policy"]), name="model_version_kind"
            ),
            models.CheckConstraint(
                condition=Q(reward_scale__isnull=True) | Q(reward_scale__gt=0),
                name="model_version_reward_scale_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.name}"


class TrainingJob(models.Model):
    class Kind(models.TextChoices):
        REWARD_MODEL = "reward_model", "Train reward model"
        PPO = "ppo", "PPO round"
        DPO = "dpo", "DPO"
        GENERATE = "generate", "Generate completions"
        ROUND = "round", "Whole round"
        ACQUISITION = "acquisition", "Task priorities from the reward model"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    team = models.ForeignKey(
        "annotation.Team",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The team of the campaigns the job reads or writes; its trainers run it.",
    )
    params = models.JSONField(default=dict, blank=True)
    campaign = models.ForeignKey(
        "annotation.Campaign",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="training_jobs",
    )
    base_model = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The model version the job starts from.",
    )
    result_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The model version the job produced.",
    )
    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True, help_text="Final metrics and counts.")
    tracking = models.JSONField(
        default=dict,
        blank=True,
        help_text="Where the experiment trackers' runs are: {tracker: directory or URI}.",
    )
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    attempt_token = models.CharField(
        max_length=32,
        blank=True,
        help_text="The running attempt's fence: only the attempt holding it writes to the job.",
    )
    celery_task_id = models.CharField(
        max_length=255, blank=True, help_text="Empty while the broker has not taken the job."
    )
    enqueue_error = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Why the broker did not take the job (the sweep tries again).",
    )
    worker = models.CharField(max_length=255, blank=True)
    device = models.CharField(max_length=255, blank=True)
    round = models.ForeignKey(
        "Round",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        help_text="The RLHF round this job works for, if any.",
    )
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="steps",
        help_text="The chained job (kind round) that ran this one as a step.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("run_training", "Can start, cancel and retry training jobs and rounds"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                name="training_job_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(
                    kind__in=["reward_model", "ppo", "dpo", "generate", "round", "acquisition"]
                ),
                name="training_job_kind_valid",
            ),
            models.CheckConstraint(
                condition=~Q(status="succeeded")
                | Q(result_version__isnull=False)
                | Q(kind__in=["generate", "round", "acquisition"]),
                name="training_job_success_has_result",
            ),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="training_job_by_status")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def waiting_for_queue(self) -> bool:
        """Queued, but the broker has not taken it yet (it was unreachable)."""
        return (
            self.status == self.Status.QUEUED
            and not self.celery_task_id
            and self.parent_id is None
            and bool(self.enqueue_error)
        )


class JobMetric(models.Model):
    """One step's metrics of a job: the time series charts are drawn from."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="metric_rows")
    step = models.PositiveIntegerField()
    values = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "step", "id"]
        indexes = [models.Index(fields=["job", "step"], name="job_metric_by_step")]

    def __str__(self) -> str:
        return f"job {self.job_id} step {self.step}"


class Round(models.Model):
    """One iteration of online RLHF: a campaign's labels → reward model → policy update → the
    next campaign, whose completions the updated policy generated.

    ``policy_before`` generated (most of) the campaign's completions; ``reference`` is the fixed
    KL reference of the whole loop (the round-0 base unless chosen otherwise). The status only
    moves forward: collecting → trained (a PPO/DPO update set ``policy_after``; another update
    may replace it) → completed (the next campaign is open; nothing changes any more). Running
    jobs are not a status: they are read from ``jobs``.
    """

    class Status(models.TextChoices):
        COLLECTING = "collecting", "Collecting labels"
        TRAINED = "trained", "Policy updated"
        NEEDS_REVIEW = "needs_review", "Needs review"
        COMPLETED = "completed", "Next round opened"

    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.COLLECTING: frozenset({Status.TRAINED, Status.NEEDS_REVIEW}),
        Status.TRAINED: frozenset({Status.TRAINED, Status.NEEDS_REVIEW, Status.COMPLETED}),
        Status.NEEDS_REVIEW: frozenset({Status.TRAINED, Status.NEEDS_REVIEW, Status.COMPLETED}),
        Status.COMPLETED: frozenset(),
    }

    class RewardScope(models.TextChoices):
        ALL = "all", "Pairs of every round so far"
        ROUND = "round", "Pairs of this round only"

    number = models.PositiveIntegerField(help_text="The campaign's round number.")
    campaign = models.OneToOneField(
        "annotation.Campaign",
        on_delete=models.CASCADE,
        related_name="rlhf_round",
        help_text="The campaign whose labels this round trains on.",
    )
    previous = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="next_round"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COLLECTING)
    reward_scope = models.CharField(
        max_length=16, choices=RewardScope.choices, default=RewardScope.ALL
    )
    reference = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The frozen KL reference of PPO and DPO (and of the evaluation's KL).",
    )
    policy_before = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The policy that generated this round's completions; updates start from it.",
    )
    reward_model = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    policy_after = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    next_campaign = models.OneToOneField(
        "annotation.Campaign",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="opened_by_round",
    )
    eval_settings = models.JSONField(
        default=dict,
        blank=True,
        help_text="How policies are evaluated (held-out fraction, samples, ...); inherited by "
        "the next round.",
    )
    evaluation = models.JSONField(
        default=dict,
        blank=True,
        help_text="policy_before / policy_after on held-out prompts: reward, KL, gold score.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["collecting", "trained", "needs_review", "completed"]),
                name="round_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(reward_scope__in=["all", "round"]), name="round_reward_scope_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Round {self.number} ({self.status})"
