"""Campaigns and who labels them: create, change settings, open/pause/close, members, invites.

Changing the overlap settings moves every task's target (:mod:`.overlap`); changing the task
order re-prioritises the real tasks (:mod:`.task_order`). Removing a member ends their open
lease.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser as User
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from accounts.services import account_require_password_change
from annotation import permissions
from annotation.errors import Conflict, InvalidInput, PermissionDenied
from annotation.models import (
    MAX_COMPLETIONS,
    MIN_COMPLETIONS,
    Assignment,
    Campaign,
    Membership,
    Team,
)
from annotation.services.assignment import assignment_release
from annotation.services.overlap import retarget_tasks
from annotation.services.task_order import apply_task_order

CAMPAIGN_SETTINGS = (
    "completions_per_task",
    "overlap",
    "allow_ties",
    "allow_fail",
    "allow_empty_completions",
    "allow_identical_completions",
    "assignment_provenance",
    "overlap_min",
    "reopen_below",
    "gold_rate",
    "onboarding_gold_tasks",
    "onboarding_threshold",
    "task_order",
    "order_seed",
    "render_markdown",
    "strength_scale",
)


def _check_rate(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInput("must be a number between 0 and 1", field=field)


def _check_campaign_settings(
    *,
    completions_per_task: int,
    overlap: int,
    overlap_min: int | None = None,
    reopen_below: float = 0.5,
    gold_rate: float = 0.0,
    onboarding_gold_tasks: int = 0,
    onboarding_threshold: float = 0.7,
    task_order: str = Campaign.TaskOrder.SEQUENTIAL,
    order_seed: int = 0,
    strength_scale: str = Campaign.StrengthScale.NONE,
) -> None:
    if strength_scale not in Campaign.StrengthScale.values:
        raise InvalidInput(
            f"must be one of {', '.join(Campaign.StrengthScale.values)}", field="strength_scale"
        )
    if not MIN_COMPLETIONS <= completions_per_task <= MAX_COMPLETIONS:
        raise InvalidInput(
            f"must be between {MIN_COMPLETIONS} and {MAX_COMPLETIONS}",
            field="completions_per_task",
        )
    if overlap < 1:
        raise InvalidInput("must be at least 1", field="overlap")
    if overlap_min is not None and not 1 <= overlap_min <= overlap:
        raise InvalidInput(f"must be between 1 and the overlap ({overlap})", field="overlap_min")
    _check_rate(reopen_below, "reopen_below")
    _check_rate(gold_rate, "gold_rate")
    _check_rate(onboarding_threshold, "onboarding_threshold")
    if not 0 <= onboarding_gold_tasks <= 1000:
        raise InvalidInput("must be between 0 and 1000", field="onboarding_gold_tasks")
    if task_order not in Campaign.TaskOrder.values:
        raise InvalidInput(f"unknown task order {task_order!r}", field="task_order")
    if not 0 <= order_seed < 2**31:
        raise InvalidInput("must be between 0 and 2^31 - 1", field="order_seed")


DEFAULT_TEAM = "Default team"


def team_default() -> Team:
    """The team of an installation that never named one: campaigns created without a team
    (the demo, scripts, a superuser's first campaign) go there."""
    team, _ = Team.objects.get_or_create(name=DEFAULT_TEAM)
    return team


def campaign_team_choose(*, user: User, team_id: int | None) -> Team:
    """The team a new campaign of ``user`` goes to: ``team_id`` if they manage it, else the one
    team they manage (a superuser on an installation without teams: :func:`team_default`).
    403 for someone who may create campaigns nowhere; 400 naming ``team`` for a team that is not
    theirs, or for no team named while they manage several."""
    if not permissions.creates_campaigns(user):
        raise PermissionDenied("only team managers create campaigns")
    teams = permissions.teams_where(user, permissions.ADD)
    if team_id is not None:
        team = teams.filter(pk=team_id).first()
        if team is None:
            raise InvalidInput("no team with this id that you manage", field="team")
        return team
    mine = list(teams[:2])
    if len(mine) == 1:
        return mine[0]
    if not mine:
        return team_default()
    raise InvalidInput("you manage several teams: say which one", field="team")


@transaction.atomic
def campaign_create(
    *,
    created_by: User | None,
    name: str,
    team: Team | None = None,
    description: str = "",
    completions_per_task: int = 4,
    overlap: int = 3,
    allow_ties: bool = True,
    allow_fail: bool = True,
    allow_empty_completions: bool = False,
    allow_identical_completions: bool = False,
    assignment_provenance: bool = False,
    round_number: int = 0,
    overlap_min: int | None = None,
    reopen_below: float = 0.5,
    gold_rate: float = 0.0,
    onboarding_gold_tasks: int = 0,
    onboarding_threshold: float = 0.7,
    task_order: str = Campaign.TaskOrder.SEQUENTIAL,
    order_seed: int = 0,
    render_markdown: bool = False,
    strength_scale: str = Campaign.StrengthScale.NONE,
) -> Campaign:
    """Create a draft campaign in ``team`` (:func:`team_default` when none is given).
    ``overlap_min`` (k_min) turns on adaptive overlap up to ``overlap`` (k_max); see
    :class:`annotation.models.Campaign` for the other settings."""
    quality_settings = {
        "overlap_min": overlap_min,
        "reopen_below": reopen_below,
        "gold_rate": gold_rate,
        "onboarding_gold_tasks": onboarding_gold_tasks,
        "onboarding_threshold": onboarding_threshold,
        "task_order": task_order,
        "order_seed": order_seed,
    }
    _check_campaign_settings(
        completions_per_task=completions_per_task,
        overlap=overlap,
        strength_scale=strength_scale,
        **quality_settings,
    )
    return Campaign.objects.create(
        team=team or team_default(),
        name=name,
        description=description,
        completions_per_task=completions_per_task,
        overlap=overlap,
        allow_ties=allow_ties,
        allow_fail=allow_fail,
        allow_empty_completions=allow_empty_completions,
        allow_identical_completions=allow_identical_completions,
        assignment_provenance=assignment_provenance,
        render_markdown=render_markdown,
        strength_scale=strength_scale,
        round_number=round_number,
        created_by=created_by,
        **quality_settings,
    )


@transaction.atomic
def campaign_update(*, campaign: Campaign, **changes: Any) -> Campaign:
    """Change a campaign's settings.

    N cannot change once tasks exist (their completions are fixed). Changing the overlap moves
    every task's target, never below the slots already taken: with a fixed overlap to the new
    one; with adaptive overlap into k_min..k_max (a task reopened on disagreement keeps its
    raised target; turning adaptive overlap on moves every task to k_min). Changing the task
    order (or its seed) recomputes every task's priority; ``uncertainty`` starts from the random
    order until an ``acquisition`` job scores the tasks.

    Locks the campaign row, then (with ``UPDATE``) the tasks whose target or priority moves.
    """
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    allowed = {"name", "description", *CAMPAIGN_SETTINGS}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    n = changes.get("completions_per_task", campaign.completions_per_task)
    merged = {name: changes.get(name, getattr(campaign, name)) for name in CAMPAIGN_SETTINGS}
    _check_campaign_settings(
        **{
            k: v
            for k, v in merged.items()
            if k
            not in (
                "allow_ties",
                "allow_fail",
                "allow_empty_completions",
                "allow_identical_completions",
                "assignment_provenance",
                "render_markdown",
            )
        }
    )
    was_adaptive = campaign.adaptive_overlap
    old_order = (campaign.task_order, campaign.order_seed)
    if n != campaign.completions_per_task and campaign.tasks.exists():
        raise Conflict(
            "cannot change the number of completions once tasks are imported",
            field="completions_per_task",
        )
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("a closed campaign cannot be changed", field="status")
    for name, value in changes.items():
        setattr(campaign, name, value)
    campaign.save(update_fields=[*changes, "updated_at"])
    if {"overlap", "overlap_min"} & changes.keys():
        retarget_tasks(campaign, was_adaptive=was_adaptive)
    if (campaign.task_order, campaign.order_seed) != old_order:
        apply_task_order(campaign, campaign.tasks.filter(is_gold=False))
    return campaign


@transaction.atomic
def campaign_set_status(*, campaign: Campaign, status: str) -> Campaign:
    """Move a campaign along draft → active ⇄ paused → closed; refuse any other move."""
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    if status not in Campaign.Status.values:
        raise InvalidInput(f"unknown status {status!r}", field="status")
    if status != campaign.status and status not in Campaign.TRANSITIONS[campaign.status]:
        raise Conflict(
            f"a {campaign.status} campaign cannot become {status}",
            field="status",
            code="illegal_transition",
        )
    if status == Campaign.Status.CLOSED:
        # Open leases end with the campaign; their slots no longer matter.
        campaign.assignments.filter(status=Assignment.Status.ASSIGNED).update(
            status=Assignment.Status.EXPIRED, finished_at=timezone.now()
        )
    campaign.status = status
    campaign.save(update_fields=["status", "updated_at"])
    return campaign


@transaction.atomic
def campaign_add_members(
    *, campaign: Campaign, users: Iterable[User], role: str | None = None
) -> int:
    """Add members with ``role`` (labeller when none is given). Members already there keep
    their place; with a ``role`` they take it. Returns how many were added.

    Refuses deactivated accounts: their rankings stay, but they take no new work."""
    users = list(users)
    if role is not None and role not in Membership.Role.values:
        raise InvalidInput(f"unknown role {role!r}", field="role")
    inactive = sorted(u.get_username() for u in users if not u.is_active)
    if inactive:
        raise InvalidInput(f"deactivated account(s): {', '.join(inactive)}", field="usernames")
    existing = set(campaign.memberships.values_list("user_id", flat=True))
    new = [
        Membership(campaign=campaign, user=u, role=role or Membership.Role.LABELLER)
        for u in users
        if u.pk not in existing
    ]
    Membership.objects.bulk_create(new, ignore_conflicts=True)
    if role is not None:
        campaign.memberships.filter(user__in=[u.pk for u in users if u.pk in existing]).update(
            role=role
        )
    return len(new)


@transaction.atomic
def campaign_remove_member(*, campaign: Campaign, user: User) -> None:
    """Remove a labeller; their open lease is released, their submitted rankings stay."""
    open_assignment = (
        Assignment.objects.select_for_update()
        .filter(campaign=campaign, labeller=user, status=Assignment.Status.ASSIGNED)
        .first()
    )
    if open_assignment is not None:
        assignment_release(open_assignment, status=Assignment.Status.EXPIRED)
    campaign.memberships.filter(user=user).delete()


INVITE_PASSWORD_BYTES = 12  # token_urlsafe(12): 16 characters, 96 bits


@transaction.atomic
def labeller_invite(
    *, campaign: Campaign, username: str, email: str = "", role: str = Membership.Role.LABELLER
) -> tuple[User, str]:
    """Create a labeller account with a random one-time password and add it to the campaign.

    Returns ``(user, password)``; the password is stored only as its hash, so the caller shows
    it once and it cannot be read back. The labeller logs in with it and must then choose their
    own (every page sends them to ``/accounts/password_change/`` until they have, and the API
    refuses them: accounts/middleware.py). Refuses an invalid or taken username and an invalid
    email.
    """
    user_model = get_user_model()
    username = (username or "").strip()
    email = (email or "").strip()
    if not username:
        raise InvalidInput("a username is required", field="username")
    try:
        user_model.username_validator(username)
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="username") from None
    if len(username) > user_model._meta.get_field("username").max_length:
        raise InvalidInput("is too long", field="username")
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise InvalidInput("is not a valid email address", field="email") from None
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("cannot add labellers to a closed campaign", field="campaign")
    if user_model.objects.filter(username__iexact=username).exists():
        raise Conflict(f"the username {username!r} is taken", field="username")
    if role not in Membership.Role.values:
        raise InvalidInput(f"unknown role {role!r}", field="role")
    password = secrets.token_urlsafe(INVITE_PASSWORD_BYTES)
    user = user_model.objects.create_user(username=username, email=email, password=password)
    account_require_password_change(user=user)
    Membership.objects.create(campaign=campaign, user=user, role=role)
    return user, password


MAX_BULK_INVITES = 1000


@transaction.atomic
def labellers_invite(
    *,
    campaigns: Sequence[Campaign],
    accounts: Sequence[dict[str, str]],
    role: str = Membership.Role.LABELLER,
) -> list[tuple[User, str]]:
    """Create several accounts at once, each with a one-time password (:func:`labeller_invite`
    for the first campaign), members of every campaign in ``campaigns`` with ``role``.

    All or nothing: an error names the account (``accounts[3].username``) and nothing is
    created. ``accounts`` holds ``{"username", "email"}`` (email optional); a username given
    twice is refused. Returns ``(user, password)`` per account, in order: the passwords exist
    only here (stored as hashes) and must be shown once.
    """
    if not campaigns:
        raise InvalidInput("name at least one campaign", field="campaigns")
    if not accounts:
        raise InvalidInput("name at least one account", field="accounts")
    if len(accounts) > MAX_BULK_INVITES:
        raise InvalidInput(f"at most {MAX_BULK_INVITES} accounts at once", field="accounts")
    seen: dict[str, int] = {}
    for i, account in enumerate(accounts):
        key = (account.get("username") or "").strip().lower()
        if key in seen:
            raise InvalidInput(
                f"repeats accounts[{seen[key]}].username", field=f"accounts[{i}].username"
            )
        seen[key] = i
    first, *others = campaigns
    invited: list[tuple[User, str]] = []
    for i, account in enumerate(accounts):
        try:
            invited.append(
                labeller_invite(
                    campaign=first,
                    username=account.get("username", ""),
                    email=account.get("email", ""),
                    role=role,
                )
            )
        except (InvalidInput, Conflict) as exc:
            where = "campaigns" if exc.field == "campaign" else f"accounts[{i}].{exc.field}"
            raise type(exc)(exc.message, field=where, code=exc.code) from None
    for campaign in others:
        if campaign.status == Campaign.Status.CLOSED:
            raise Conflict("cannot add labellers to a closed campaign", field="campaigns")
        campaign_add_members(campaign=campaign, users=[user for user, _ in invited], role=role)
    return invited
