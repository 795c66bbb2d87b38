"""Writes: every change to campaigns, tasks, assignments and rankings goes through here, one
module per concern (the names below are the package's public surface; callers use
``services.task_assign_next`` and so on):

- :mod:`.campaigns`: create, settings, status, members, invites
- :mod:`.guidelines`: guideline versions and acknowledgements
- :mod:`.imports`: prompts and completions in, tasks created; existing rankings in
- :mod:`.task_order`: the priority tasks are handed out by
- :mod:`.assignment`: the next task, leases, the sweep of lapsed leases
- :mod:`.rankings`: submitting a ranking, editing it (versions), skipping a task
- :mod:`.review`: adjudicating a task (review)
- :mod:`.overlap`: how many labellers a task gets (adaptive overlap)
- :mod:`.gold`: marking gold tasks
- :mod:`.webhooks`: webhooks of a campaign, its events and their signed delivery

Locking rules (PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE instead):

- ``Membership`` row of (campaign, labeller): held while handing that labeller a task, so one
  labeller's concurrent requests cannot take two leases.
- ``Task`` row: held whenever ``active_count``/``submitted_count`` change. Candidate tasks are
  picked with ``FOR UPDATE SKIP LOCKED`` so concurrent labellers never wait on each other.
- ``Assignment`` row: held while submitting, editing, skipping or expiring it, so each happens
  once.
- ``Task`` row, alone: held while a reviewer adjudicates it, so a labeller's edit (assignment,
  then task) is either seen by the decision or refused after it.

Order: membership, then assignment, then task. Nothing locks a task before an assignment.
"""

from annotation.services.assignment import assignment_release, assignments_expire, task_assign_next
from annotation.services.campaigns import (
    CAMPAIGN_SETTINGS,
    campaign_add_members,
    campaign_create,
    campaign_remove_member,
    campaign_set_status,
    campaign_team_choose,
    campaign_update,
    labeller_invite,
    labellers_invite,
    team_default,
)
from annotation.services.gold import task_mark_gold, task_unmark_gold
from annotation.services.guidelines import guideline_acknowledge, guideline_publish
from annotation.services.imports import (
    ImportResult,
    RankingImportResult,
    campaign_import,
    campaign_import_file,
    campaign_import_rankings,
    campaign_import_upload,
    import_job_run,
    task_statistics_refresh,
    tasks_create,
)
from annotation.services.overlap import initial_overlap, task_disagrees
from annotation.services.rankings import (
    EditResult,
    SubmitResult,
    assignment_skip,
    normalise_items,
    ranking_edit,
    ranking_submit,
)
from annotation.services.review import task_adjudicate
from annotation.services.task_order import random_priority, task_priorities_set

__all__ = [
    "CAMPAIGN_SETTINGS",
    "EditResult",
    "ImportResult",
    "RankingImportResult",
    "SubmitResult",
    "assignment_release",
    "assignment_skip",
    "assignments_expire",
    "campaign_add_members",
    "campaign_create",
    "campaign_import",
    "campaign_import_file",
    "campaign_import_rankings",
    "campaign_import_upload",
    "campaign_remove_member",
    "campaign_set_status",
    "campaign_team_choose",
    "campaign_update",
    "guideline_acknowledge",
    "guideline_publish",
    "import_job_run",
    "initial_overlap",
    "labeller_invite",
    "labellers_invite",
    "normalise_items",
    "random_priority",
    "ranking_edit",
    "ranking_submit",
    "task_adjudicate",
    "task_assign_next",
    "task_disagrees",
    "task_mark_gold",
    "task_priorities_set",
    "task_statistics_refresh",
    "task_unmark_gold",
    "tasks_create",
    "team_default",
]
