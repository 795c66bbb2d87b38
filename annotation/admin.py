"""Django's admin: raw records for staff. The campaign dashboard is separate."""

from django.contrib import admin

from annotation.models import (
    Assignment,
    Campaign,
    Completion,
    Guideline,
    Membership,
    Prompt,
    Ranking,
    RankingItem,
    Task,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "status", "completions_per_task", "overlap", "round_number"]
    list_filter = ["status"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(Guideline)
class GuidelineAdmin(admin.ModelAdmin):
    list_display = ["campaign", "version", "created_at"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "campaign", "external_id", "text"]
    search_fields = ["text", "external_id"]


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "source"]
    raw_id_fields = ["prompt"]


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["id", "campaign", "target_overlap", "active_count", "submitted_count"]
    list_filter = ["campaign"]
    raw_id_fields = ["prompt"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "labeller", "status", "lease_expires_at"]
    list_filter = ["status", "campaign"]
    raw_id_fields = ["task", "labeller"]


class RankingItemInline(admin.TabularInline):
    model = RankingItem
    extra = 0
    raw_id_fields = ["completion"]


@admin.register(Ranking)
class RankingAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "labeller", "guideline", "time_spent_ms", "created_at"]
    list_filter = ["campaign"]
    raw_id_fields = ["assignment", "task", "labeller"]
    inlines = [RankingItemInline]
