"""Django's admin: the raw records, for staff with Django's permissions on them.

Labels are never changed or deleted here: prompts, completions, tasks, assignments, rankings
and their items are read-only (the services keep their counts and invariants; the dashboard and
the API are where work changes). Campaigns are closed on the dashboard, never deleted. Users are
deactivated, never deleted: their rankings stay, attributed to them. Teams and their managers
are set up here.
"""

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from annotation.models import (
    Adjudication,
    Assignment,
    Campaign,
    Completion,
    Guideline,
    Membership,
    Prompt,
    Ranking,
    RankingItem,
    RankingVersion,
    Task,
    Team,
    TeamMembership,
)
from annotation.services.integrity import user_deactivate


class ReadOnly:
    """View only, whatever the user's model permissions say."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class MembershipInline(ReadOnly, admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "added_at", "onboarding_passed_at"]
    readonly_fields = fields


@admin.register(Campaign)
class CampaignAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "name", "team", "status", "completions_per_task", "overlap"]
    list_filter = ["status", "team"]
    search_fields = ["name"]
    inlines = [MembershipInline]


class TeamMembershipInline(admin.TabularInline):
    model = TeamMembership
    extra = 1
    raw_id_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "created_at"]
    search_fields = ["name"]
    inlines = [TeamMembershipInline]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # its campaigns hold labels (PROTECT): a team is never deleted


@admin.register(Guideline)
class GuidelineAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["campaign", "version", "created_at"]


@admin.register(Prompt)
class PromptAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "campaign", "external_id", "text"]
    search_fields = ["text", "external_id"]


@admin.register(Completion)
class CompletionAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "prompt", "source"]


@admin.register(Task)
class TaskAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "campaign", "target_overlap", "active_count", "submitted_count"]
    list_filter = ["campaign"]


@admin.register(Assignment)
class AssignmentAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "task", "labeller", "status", "lease_expires_at"]
    list_filter = ["status", "campaign"]


class RankingItemInline(ReadOnly, admin.TabularInline):
    model = RankingItem
    extra = 0


class RankingVersionInline(ReadOnly, admin.TabularInline):
    model = RankingVersion
    extra = 0


@admin.register(Ranking)
class RankingAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "task", "labeller", "version", "time_spent_ms", "created_at"]
    list_filter = ["campaign"]
    inlines = [RankingItemInline, RankingVersionInline]


@admin.register(Adjudication)
class AdjudicationAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "task", "reviewer", "decision", "updated_at"]
    list_filter = ["campaign", "decision"]


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class AccountAdmin(UserAdmin):
    """Django's user admin, with deactivation in place of deletion."""

    actions = ["deactivate"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Deactivate (keeps their rankings; ends their open tasks)")
    def deactivate(self, request, queryset) -> None:
        ended = sum(user_deactivate(user=user) for user in queryset.filter(is_active=True))
        self.message_user(
            request,
            f"Deactivated {queryset.count()} account(s); "
            f"{ended} open task(s) returned to the pool.",
            messages.SUCCESS,
        )
