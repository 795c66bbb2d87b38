"""The annotation data model: campaigns, guidelines, prompts, tasks, assignments and rankings.

Invariants are enforced by the database as well as by the services: one ranking per task and
labeller, one assignment per task and labeller, a task never holds more active assignments than
its target overlap, ranks within 1..9 or marked fail, and so on. Writes go through
``annotation.services``; reads that need access checks through ``annotation.selectors``.

Labels are never destroyed by routine administration: every path from a user, a campaign, a
prompt or a completion to a ranking is ``PROTECT``, so deleting any of them while labels hang
off it fails instead of taking the labels along (users are deactivated, campaigns closed).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

MIN_COMPLETIONS = 2
MAX_COMPLETIONS = 9


class Team(models.Model):
    """Who owns campaigns: a lab, a project or a customer. Its managers run its campaigns and
    see nobody else's; its trainers also start training on them (``annotation.permissions``)."""

    name = models.CharField(max_length=200, unique=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="TeamMembership", related_name="teams", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TeamMembership(models.Model):
    class Role(models.TextChoices):
        MANAGER = "manager", "Manager: runs every campaign of the team"
        TRAINER = "trainer", "Trainer: a manager who also starts training jobs and rounds"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MANAGER)
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="team_membership_unique"),
            models.CheckConstraint(
                condition=Q(role__in=["manager", "trainer"]), name="team_membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.team}"


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        CLOSED = "closed", "Closed"

    class TaskOrder(models.TextChoices):
        SEQUENTIAL = "sequential", "Sequential (import order)"
        RANDOM = "random", "Random (seeded, stable)"
        UNCERTAINTY = "uncertainty", "Most uncertain for the reward model first"

    class StrengthScale(models.TextChoices):
        """How much better: none, Llama 2's four levels, or HelpSteer3 -3..3 (its magnitude
        1..3 stored per gap, the sign being the ranking's direction)."""

        NONE = "none", "No preference strength"
        LLAMA2 = "llama2", "Four levels (Llama 2): negligibly, slightly, better, significantly"
        HELPSTEER = "helpsteer", "-3..3 with an optional one-line justification (HelpSteer3)"

    # Allowed status transitions; the campaign services refuse any other.
    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.DRAFT: frozenset({Status.ACTIVE, Status.CLOSED}),
        Status.ACTIVE: frozenset({Status.PAUSED, Status.CLOSED}),
        Status.PAUSED: frozenset({Status.ACTIVE, Status.CLOSED}),
        Status.CLOSED: frozenset(),
    }

    team = models.ForeignKey(
        Team,
        on_delete=models.PROTECT,
        related_name="campaigns",
        help_text="The team whose managers run this campaign.",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    completions_per_task = models.PositiveSmallIntegerField(
        default=4, help_text="N: completions shown in each task (2 to 9)."
    )
    overlap = models.PositiveSmallIntegerField(
        default=3, help_text="k: distinct labellers who rank each task."
    )
    allow_ties = models.BooleanField(default=True)
    allow_fail = models.BooleanField(default=True)
    allow_empty_completions = models.BooleanField(
        default=False,
        help_text="Imports accept empty completions (real data has them) and count them as "
        "warnings; refused otherwise.",
    )
    allow_identical_completions = models.BooleanField(
        default=False,
        help_text="Imports accept two identical completions of one prompt (two systems gave the "
        "same output) and count them as warnings; refused otherwise.",
    )
    round_number = models.PositiveIntegerField(
        default=0, help_text="Iterated RLHF round this campaign collects labels for."
    )
    overlap_min = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Adaptive overlap: tasks start at this many labellers (k_min) and are reopened, "
        "one labeller at a time up to `overlap` (k_max), while their rankings disagree. "
        "Null: every task gets `overlap` labellers.",
    )
    reopen_below = models.FloatField(
        default=0.5,
        help_text="Adaptive overlap: a task that reached its target is reopened when its "
        "labellers' pairwise agreement on strict pairs is below this.",
    )
    gold_rate = models.FloatField(
        default=0.0,
        help_text="Share of a labeller's tasks drawn from the gold tasks (0 to 1).",
    )
    onboarding_gold_tasks = models.PositiveSmallIntegerField(
        default=0,
        help_text="M: a new labeller ranks only gold tasks until M are done, and gets real ones "
        "if their agreement with the references reaches onboarding_threshold. 0: no onboarding.",
    )
    onboarding_threshold = models.FloatField(
        default=0.7,
        help_text="Agreement with the gold references (strict pairs) needed to pass onboarding; "
        "also the level below which a labeller's recent gold agreement is flagged.",
    )

    task_order = models.CharField(
        max_length=16,
        choices=TaskOrder.choices,
        default=TaskOrder.SEQUENTIAL,
        help_text="Which tasks are served first (after tasks others started): Task.priority.",
    )
    order_seed = models.PositiveIntegerField(
        default=0, help_text="Seed of the random order (with the campaign id)."
    )
    webhooks_active = models.BooleanField(
        default=False,
        editable=False,
        help_text="Whether any active webhook listens (kept by the webhook services), so the "
        "labelling hot path reads it with the campaign instead of querying for webhooks.",
    )
    assignment_provenance = models.BooleanField(
        default=False,
        help_text="Assignments show labellers the prompt's external id and metadata and each "
        "completion's source. Off by default: sources name the models (blind labelling), and "
        "gold prompts' ids or sources can tell gold tasks apart.",
    )
    render_markdown = models.BooleanField(
        default=False,
        help_text="Show prompts and completions as markdown (sanitised as the guidelines are) "
        "instead of plain text.",
    )
    strength_scale = models.CharField(
        max_length=16,
        choices=StrengthScale.choices,
        default=StrengthScale.NONE,
        help_text="Ask how much better, per adjacent rank gap (annotation.strength).",
    )
    current_guideline = models.ForeignKey(
        "Guideline",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The latest published guideline version (kept by guideline_publish).",
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="campaigns", blank=True
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # Beside Django's add/change/view: what roles grant (annotation.permissions).
        permissions = [
            ("export_campaign", "Can export a campaign's rankings, pairs and agreement figures"),
            ("review_campaign", "Can review and adjudicate a campaign's tasks"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(completions_per_task__gte=MIN_COMPLETIONS)
                & Q(completions_per_task__lte=MAX_COMPLETIONS),
                name="campaign_completions_per_task_2_to_9",
            ),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="campaign_overlap_positive"),
            models.CheckConstraint(
                condition=Q(status__in=["draft", "active", "paused", "closed"]),
                name="campaign_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(overlap_min__isnull=True)
                | (Q(overlap_min__gte=1) & Q(overlap_min__lte=F("overlap"))),
                name="campaign_overlap_min_within_overlap",
            ),
            models.CheckConstraint(
                condition=Q(gold_rate__gte=0)
                & Q(gold_rate__lte=1)
                & Q(reopen_below__gte=0)
                & Q(reopen_below__lte=1)
                & Q(onboarding_threshold__gte=0)
                & Q(onboarding_threshold__lte=1),
                name="campaign_rates_0_1",
            ),
            models.CheckConstraint(
                condition=Q(task_order__in=["sequential", "random", "uncertainty"]),
                name="campaign_task_order_valid",
            ),
            models.CheckConstraint(
                condition=Q(strength_scale__in=["none", "llama2", "helpsteer"]),
                name="campaign_strength_scale_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def adaptive_overlap(self) -> bool:
        """Tasks start at ``overlap_min`` labellers and grow toward ``overlap`` on disagreement."""
        return self.overlap_min is not None and self.overlap_min < self.overlap


class Membership(models.Model):
    """Someone's place in a campaign, with their role there; its row is the per-labeller lock
    for assignment. Every role labels; reviewers also review, managers also run the campaign."""

    class Role(models.TextChoices):
        LABELLER = "labeller", "Labeller"
        REVIEWER = "reviewer", "Reviewer: labels, and reviews and adjudicates tasks"
        MANAGER = "manager", "Manager: labels, reviews and runs this campaign"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.LABELLER)
    added_at = models.DateTimeField(auto_now_add=True)
    onboarding_passed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the labeller passed onboarding on the gold tasks (null: not yet, or the "
        "campaign has none). A failed onboarding is not stored: it is read from the rankings.",
    )
    onboarding_agreement = models.FloatField(
        null=True, blank=True, help_text="Agreement with the gold references when they passed."
    )
    acknowledged_guideline = models.ForeignKey(
        "Guideline",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The newest guideline version this labeller acknowledged in this campaign.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "user"], name="membership_unique"),
            models.CheckConstraint(
                condition=Q(role__in=["labeller", "reviewer", "manager"]),
                name="membership_role_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.campaign}"


class Guideline(models.Model):
    """One published version of a campaign's labelling guidelines (markdown)."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="guidelines")
    version = models.PositiveIntegerField()
    text = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["campaign", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "version"], name="guideline_version_unique"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="guideline_version_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} guidelines v{self.version}"


class GuidelineAcknowledgement(models.Model):
    guideline = models.ForeignKey(
        Guideline, on_delete=models.CASCADE, related_name="acknowledgements"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="acknowledgements"
    )
    acknowledged_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["guideline", "user"], name="acknowledgement_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} acknowledged guideline {self.guideline_id}"


class Prompt(models.Model):
    """A prompt as imported or written: plain text, optionally the chat messages behind it."""

    campaign = models.ForeignKey(
        Campaign,
        on_delete=models.PROTECT,
        related_name="prompts",
        help_text="The campaign the prompt was imported into.",
    )
    external_id = models.CharField(max_length=200, blank=True)
    text = models.TextField()
    messages = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=~Q(text=""), name="prompt_text_not_empty"),
        ]

    def __str__(self) -> str:
        return self.text[:60]


class Completion(models.Model):
    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="completions")
    text = models.TextField()
    source = models.CharField(
        max_length=200,
        help_text="Where the text came from: a model version label or a named source.",
    )
    model_version = models.ForeignKey(
        "training.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="completions",
        help_text="The policy that generated this completion, when one did.",
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # No "not empty" constraint: an empty completion is real data where the campaign allows
        # it (Campaign.allow_empty_completions); the import refuses it otherwise.
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text[:60]


class Task(models.Model):
    """A prompt with its N completions, to be ranked by ``target_overlap`` labellers.

    ``active_count`` counts assignments that hold a slot: open leases and submitted rankings.
    It changes only while the task row is locked (``SELECT ... FOR UPDATE``), and the database
    refuses a value above ``target_overlap``: a task can never be over-assigned.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="tasks")
    completions = models.ManyToManyField(Completion, through="TaskCompletion", related_name="tasks")
    target_overlap = models.PositiveSmallIntegerField()
    active_count = models.PositiveSmallIntegerField(default=0)
    submitted_count = models.PositiveSmallIntegerField(default=0)
    is_gold = models.BooleanField(
        default=False,
        help_text="A gold task: mixed into every labeller's queue, compared with its reference "
        "ranking, never exported as training data nor counted in inter-labeller agreement.",
    )
    gold_ranking = models.JSONField(
        null=True,
        blank=True,
        help_text='Gold tasks: the reference labels, {"<completion id>": rank or "F"}.',
    )
    priority = models.FloatField(
        default=0.0,
        help_text="Higher is served first among tasks started by as many labellers (the "
        "campaign's task order: 0 sequential, seeded uniform random, or reward-model "
        "uncertainty).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(active_count__lte=F("target_overlap")),
                name="task_active_within_overlap",
            ),
            models.CheckConstraint(
                condition=Q(submitted_count__lte=F("active_count")),
                name="task_submitted_within_active",
            ),
            models.CheckConstraint(
                condition=Q(target_overlap__gte=1), name="task_target_overlap_positive"
            ),
            models.CheckConstraint(
                condition=Q(is_gold=False) | Q(gold_ranking__isnull=False),
                name="task_gold_has_reference",
            ),
        ]
        indexes = [
            # Breadth-first pick: open real tasks of a campaign, the most started first, then
            # the highest priority. Partial, so full tasks drop out of the index instead of being
            # scanned past.
            models.Index(
                F("campaign"),
                F("active_count").desc(),
                F("priority").desc(),
                F("id"),
                name="task_open_by_priority",
                condition=Q(active_count__lt=F("target_overlap")) & Q(is_gold=False),
            ),
            models.Index(
                fields=["campaign", "id"], name="task_gold_by_campaign", condition=Q(is_gold=True)
            ),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk} ({self.campaign_id})"


class TaskCompletion(models.Model):
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="task_completions")
    completion = models.ForeignKey(
        Completion, on_delete=models.PROTECT, related_name="task_completions"
    )
    position = models.PositiveSmallIntegerField(help_text="Order in the imported file.")

    class Meta:
        ordering = ["task", "position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "completion"], name="task_completion_unique"),
            models.UniqueConstraint(fields=["task", "position"], name="task_position_unique"),
        ]

    def __str__(self) -> str:
        return f"Task {self.task_id} #{self.position}: completion {self.completion_id}"


class Assignment(models.Model):
    """A labeller's lease on a task. One per (task, labeller): re-opening reuses the row."""

    class Status(models.TextChoices):
        ASSIGNED = "assigned", "Assigned"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="assignments")
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="assignments")
    labeller = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="assignments"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ASSIGNED)
    display_order = models.JSONField(
        help_text="Completion ids in the shuffled order this labeller sees them."
    )
    guideline = models.ForeignKey(
        "Guideline",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The guideline version the labeller had acknowledged when given the task.",
    )
    assigned_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-assigned_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "labeller"], name="assignment_unique"),
            models.CheckConstraint(
                condition=Q(status__in=["assigned", "submitted", "skipped", "expired"]),
                name="assignment_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(lease_expires_at__gt=F("assigned_at")),
                name="assignment_lease_after_start",
            ),
            # A labeller holds at most one open lease per campaign.
            models.UniqueConstraint(
                fields=["campaign", "labeller"],
                condition=Q(status="assigned"),
                name="assignment_one_open_per_labeller",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "lease_expires_at"], name="assignment_open_by_expiry"),
            models.Index(fields=["campaign", "labeller", "status"], name="assignment_by_labeller"),
        ]

    def __str__(self) -> str:
        return f"Assignment {self.pk} of task {self.task_id} to {self.labeller_id}"


class Ranking(models.Model):
    """A labeller's submitted ranking of one task; its items hold one label per completion.

    The row is always the latest version: an edit (``services.ranking_edit``) copies the
    version it replaces into :class:`RankingVersion` and rewrites the items here, so every
    reader (agreement, pairs, consensus) sees the latest without a filter, and a first submit
    costs what it did before versions existed.
    """

    assignment = models.OneToOneField(Assignment, on_delete=models.PROTECT, related_name="ranking")
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="rankings")
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="rankings")
    labeller = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rankings"
    )
    guideline = models.ForeignKey(
        Guideline,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="rankings",
        help_text="The guideline version the ranking was made under.",
    )
    time_spent_ms = models.PositiveIntegerField()
    comment = models.TextField(blank=True)
    strength = models.JSONField(
        null=True,
        blank=True,
        help_text="Preference strength per adjacent rank gap, best first (annotation.strength); "
        "null when the campaign asks none.",
    )
    justification = models.CharField(
        max_length=300, blank=True, help_text="The one-line reason for the strength (HelpSteer)."
    )
    version = models.PositiveSmallIntegerField(
        default=1, help_text="1 when first submitted; each edit adds one (RankingVersion)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    edited_at = models.DateTimeField(
        null=True, blank=True, help_text="When the latest version replaced an earlier one."
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "labeller"], name="ranking_unique"),
            models.CheckConstraint(condition=Q(version__gte=1), name="ranking_version_positive"),
        ]
        indexes = [models.Index(fields=["campaign", "created_at"], name="ranking_by_campaign")]

    def __str__(self) -> str:
        return f"Ranking {self.pk} of task {self.task_id} by {self.labeller_id}"


class RankingItem(models.Model):
    """One completion's label in a ranking: a rank (1 best; equal ranks tie) or fail."""

    ranking = models.ForeignKey(Ranking, on_delete=models.CASCADE, related_name="items")
    completion = models.ForeignKey(
        Completion, on_delete=models.PROTECT, related_name="ranking_items"
    )
    rank = models.PositiveSmallIntegerField(null=True, blank=True)
    failed = models.BooleanField(default=False)

    class Meta:
        ordering = ["ranking", "id"]
        constraints = [
            models.UniqueConstraint(fields=["ranking", "completion"], name="ranking_item_unique"),
            models.CheckConstraint(
                condition=(
                    Q(failed=True, rank__isnull=True)
                    | Q(
                        failed=False,
                        rank__isnull=False,
                        rank__gte=1,
                        rank__lte=MAX_COMPLETIONS,
                    )
                ),
                name="ranking_item_rank_or_fail",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.completion_id}: {self.label}"

    @property
    def label(self) -> int | str:
        return "F" if self.failed else int(self.rank)


class RankingVersion(models.Model):
    """An earlier version of a ranking, kept when its labeller edited it (the ranking row holds
    the latest). Exported with ``?versions=all``; never read by agreement or pairs."""

    ranking = models.ForeignKey(Ranking, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveSmallIntegerField()
    items = models.JSONField(help_text='{"<completion id>": rank or "F"} as it was.')
    guideline = models.ForeignKey(
        Guideline, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    time_spent_ms = models.PositiveIntegerField()
    comment = models.TextField(blank=True)
    strength = models.JSONField(null=True, blank=True)
    justification = models.CharField(max_length=300, blank=True)
    submitted_at = models.DateTimeField(help_text="When this version was submitted.")
    replaced_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["ranking", "version"]
        constraints = [
            models.UniqueConstraint(fields=["ranking", "version"], name="ranking_version_unique"),
        ]

    def __str__(self) -> str:
        return f"Ranking {self.ranking_id} v{self.version}"


class Adjudication(models.Model):
    """A reviewer's decision on a task: the ranking that stands for it in aggregated exports.

    The reviewer accepted the labellers' consensus, picked one labeller's ranking, or wrote a
    ranking of their own, with a note. Kept apart from the labellers' rankings: never a
    :class:`Ranking`, so never in inter-labeller agreement. One per task (a new decision
    replaces it); a reviewer never adjudicates a task they ranked.
    """

    class Decision(models.TextChoices):
        CONSENSUS = "consensus", "Accepted the consensus"
        LABELLER = "labeller", "Picked one labeller's ranking"
        WRITTEN = "written", "Wrote an adjudicated ranking"

    task = models.OneToOneField(Task, on_delete=models.PROTECT, related_name="adjudication")
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="adjudications")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="adjudications"
    )
    decision = models.CharField(max_length=16, choices=Decision.choices)
    source_ranking = models.ForeignKey(
        Ranking,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The labeller's ranking picked (decision labeller).",
    )
    items = models.JSONField(help_text='The adjudicated ranking: {"<completion id>": rank or "F"}.')
    note = models.TextField(blank=True)
    reviewed_rankings = models.JSONField(
        default=list, help_text="[ranking id, version] of each ranking the reviewer saw."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(decision__in=["consensus", "labeller", "written"]),
                name="adjudication_decision_valid",
            ),
            models.CheckConstraint(
                condition=Q(decision="labeller", source_ranking__isnull=False)
                | (~Q(decision="labeller") & Q(source_ranking__isnull=True)),
                name="adjudication_source_for_labeller",
            ),
        ]
        indexes = [models.Index(fields=["campaign", "task"], name="adjudication_by_campaign")]

    def __str__(self) -> str:
        return f"Adjudication of task {self.task_id} ({self.decision})"


class ImportJob(models.Model):
    """A large import, run by a worker instead of the web request (``IMPORT_BACKGROUND_BYTES``).

    The uploaded file is kept in the row (web and worker share only the database) until the
    import is done; the import itself is all or nothing, as in the request.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Stage(models.TextChoices):
        WAITING = "waiting", "Waiting for a worker"
        PARSING = "parsing", "Reading and checking every line"
        STORING = "storing", "Storing prompts, completions and tasks"
        DONE = "done", "Done"

    class Kind(models.TextChoices):
        TASKS = "tasks", "Prompts and completions (tasks)"
        RANKINGS = "rankings", "Existing rankings"

    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="import_jobs")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TASKS)
    options = models.JSONField(
        default=dict, blank=True, help_text="The import's options (rankings: labellers, overlap)."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    filename = models.CharField(max_length=255)
    format = models.CharField(max_length=8, blank=True)
    size = models.PositiveBigIntegerField()
    data = models.BinaryField(editable=False, help_text="The upload, cleared once done.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.WAITING)
    records = models.PositiveIntegerField(
        null=True, blank=True, help_text="Prompts read from the file (once parsed)."
    )
    result = models.JSONField(default=dict, blank=True, help_text="What was stored.")
    errors = models.JSONField(
        default=list, blank=True, help_text="Line-numbered errors: [{line, field, message}]."
    )
    error = models.TextField(blank=True, help_text="An unexpected failure, for the operator.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed"]),
                name="import_job_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"import #{self.pk} {self.filename} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)

    @property
    def result_or_none(self) -> dict | None:
        return self.result or None


class Webhook(models.Model):
    """A URL told about a campaign's events (``annotation.services.webhooks``): each event is a
    signed JSON POST, delivered by a worker with retries."""

    class Event(models.TextChoices):
        RANKING_SUBMITTED = "ranking.submitted", "A ranking was submitted"
        TASK_COMPLETE = "task.complete", "A task has all its rankings"
        CAMPAIGN_COMPLETE = "campaign.complete", "Every real task of the campaign is complete"
        JOB_FINISHED = "job.finished", "A training job of the campaign succeeded"
        JOB_FAILED = "job.failed", "A training job of the campaign failed"
        ROUND_NEEDS_REVIEW = "round.needs_review", "A round is ready for review"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=1000)
    events = models.JSONField(help_text="The events sent (Webhook.Event values).")
    secret = models.CharField(
        max_length=64,
        editable=False,
        help_text="Signs each delivery (HMAC-SHA256 of the body, header X-RLHF-Signature); "
        "shown once when the webhook is made.",
    )
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"webhook {self.pk} of campaign {self.campaign_id} → {self.url}"


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one webhook: what, how often tried, how it went."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (retries exhausted)"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.event} to webhook {self.webhook_id} ({self.status})"
