"""Who may do what: roles in a team and in a campaign, read as Django permissions.

There is one mechanism, Django's: ``user.has_perm(perm)`` for what a user may do everywhere
(the superuser; permissions given to a user or a group in ``/admin/``), and
``user.has_perm(perm, campaign)`` for what a role gives on one campaign (:class:`RoleBackend`,
listed in ``AUTHENTICATION_BACKENDS``). :func:`can` asks both. ``is_staff`` only opens Django's
admin site, where Django's model permissions apply; it gives nothing on the dashboard or the API.

Roles (the README has the matrix):

- a **team** (:class:`annotation.models.Team`) owns campaigns. Its *managers* run all of them
  (create, settings, members, guidelines, import, quality, exports, review); its *trainers* also
  start, cancel and retry training jobs and rounds on them. Nobody sees another team's
  campaigns, labellers, exports, jobs or models;
- in a **campaign** (:class:`annotation.models.Membership`) everyone labels; *reviewers* also
  see the campaign's figures and review its tasks; *managers* run that one campaign (but do not
  train: training reads and writes across a team's campaigns).
"""

from __future__ import annotations

from django.contrib.auth.backends import BaseBackend
from django.db.models import Exists, OuterRef, Q, QuerySet

from annotation.models import Campaign, Membership, Team, TeamMembership

ADD = "annotation.add_campaign"
"""Create campaigns (in a team one manages)."""
VIEW = "annotation.view_campaign"
"""The campaign's dashboard pages: progress, labellers, quality figures, every ranking."""
CHANGE = "annotation.change_campaign"
"""Settings, status, members, guidelines, imports, gold tasks."""
EXPORT = "annotation.export_campaign"
"""Downloads: rankings, pairs, agreement and labeller tables."""
REVIEW = "annotation.review_campaign"
"""Review and adjudicate tasks."""
TRAIN = "training.run_training"
"""Start, cancel and retry training jobs and rounds on the campaign's labels."""
VIEW_JOBS = "training.view_trainingjob"
"""See training jobs and the models they trained (a team's: its managers and trainers)."""

_RUN = frozenset({VIEW, CHANGE, EXPORT, REVIEW})
CAMPAIGN_ROLES: dict[str, frozenset[str]] = {
    Membership.Role.LABELLER: frozenset(),
    Membership.Role.REVIEWER: frozenset({VIEW, REVIEW}),
    Membership.Role.MANAGER: _RUN,
}
TEAM_ROLES: dict[str, frozenset[str]] = {
    TeamMembership.Role.MANAGER: _RUN | {ADD, VIEW_JOBS},
    TeamMembership.Role.TRAINER: _RUN | {ADD, VIEW_JOBS, TRAIN},
}


def _roles_granting(roles: dict[str, frozenset[str]], perm: str) -> list[str]:
    return [role for role, perms in roles.items() if perm in perms]


class RoleBackend(BaseBackend):
    """Object permissions from roles: ``has_perm(user, perm, campaign_or_team)``.

    Answers only for a Campaign or a Team (global permissions are ModelBackend's), from two
    queries per user and object, cached on the user object for the request.
    """

    def get_all_permissions(self, user_obj, obj=None) -> set[str]:
        if obj is None or not user_obj.is_active or user_obj.is_anonymous:
            return set()
        if isinstance(obj, Campaign):
            key, team_id = ("campaign", obj.pk), obj.team_id
        elif isinstance(obj, Team):
            key, team_id = ("team", obj.pk), obj.pk
        else:
            return set()
        cache = user_obj.__dict__.setdefault("_role_perm_cache", {})
        if key not in cache:
            perms: set[str] = set()
            team_role = (
                TeamMembership.objects.filter(team_id=team_id, user=user_obj)
                .values_list("role", flat=True)
                .first()
            )
            if team_role is not None:
                perms |= TEAM_ROLES[team_role]
            if key[0] == "campaign":
                role = (
                    Membership.objects.filter(campaign_id=obj.pk, user=user_obj)
                    .values_list("role", flat=True)
                    .first()
                )
                if role is not None:
                    perms |= CAMPAIGN_ROLES[role]
            cache[key] = frozenset(perms)
        return set(cache[key])

    def has_perm(self, user_obj, perm, obj=None) -> bool:
        return perm in self.get_all_permissions(user_obj, obj)


def can(user, perm: str, obj: Campaign | Team | None = None) -> bool:
    """Django's permission everywhere, or a role's on ``obj``."""
    if not user.is_authenticated:
        return False
    return user.has_perm(perm) or (obj is not None and user.has_perm(perm, obj))


def teams_where(user, perm: str) -> QuerySet[Team]:
    """The teams on which ``user`` holds ``perm`` through a team role (all of them with the
    permission everywhere)."""
    if not user.is_authenticated:
        return Team.objects.none()
    if user.has_perm(perm):
        return Team.objects.all()
    return Team.objects.filter(
        Exists(
            TeamMembership.objects.filter(
                team=OuterRef("pk"), user=user, role__in=_roles_granting(TEAM_ROLES, perm)
            )
        )
    )


def campaigns_where(user, perm: str) -> QuerySet[Campaign]:
    """The campaigns on which ``user`` holds ``perm``, through a team or a campaign role."""
    if not user.is_authenticated:
        return Campaign.objects.none()
    if user.has_perm(perm):
        return Campaign.objects.all()
    return Campaign.objects.filter(_holds(user, perm))


def _holds(user, perm: str) -> Q:
    team_role = Exists(
        TeamMembership.objects.filter(
            team=OuterRef("team"), user=user, role__in=_roles_granting(TEAM_ROLES, perm)
        )
    )
    campaign_role = Exists(
        Membership.objects.filter(
            campaign=OuterRef("pk"), user=user, role__in=_roles_granting(CAMPAIGN_ROLES, perm)
        )
    )
    return Q(team_role) | Q(campaign_role)


def visible_campaigns(user) -> QuerySet[Campaign]:
    """What ``user`` sees at all: the campaigns they run or review (drafts included), and those
    they label that are not drafts."""
    if not user.is_authenticated:
        return Campaign.objects.none()
    if user.has_perm(VIEW):
        return Campaign.objects.all()
    member = Exists(Membership.objects.filter(campaign=OuterRef("pk"), user=user))
    return Campaign.objects.filter(
        _holds(user, VIEW) | (Q(member) & ~Q(status=Campaign.Status.DRAFT))
    )


def creates_campaigns(user) -> bool:
    """Whether ``user`` may create campaigns somewhere (everywhere, or in a team they manage)."""
    return can(user, ADD) or teams_where(user, ADD).exists()


def sees_training(user) -> bool:
    """Whether ``user`` has training pages: a team role, or the permission everywhere."""
    return can(user, VIEW_JOBS) or teams_where(user, VIEW_JOBS).exists()


def trains_anywhere(user) -> bool:
    """Whether ``user`` may start training somewhere."""
    return can(user, TRAIN) or teams_where(user, TRAIN).exists()


def runs_anything(user) -> bool:
    """Whether ``user`` has a dashboard: a campaign to view, a team role, or a permission."""
    if not user.is_authenticated:
        return False
    return (
        user.has_perm(VIEW)
        or user.has_perm(ADD)
        or TeamMembership.objects.filter(user=user).exists()
        or campaigns_where(user, VIEW).exists()
    )
